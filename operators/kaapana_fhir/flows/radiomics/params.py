"""Parameters of the radiomics flow (``workflow_form`` keys of ``dags/dag_radiomics_to_fhir.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar

from kaapana_fhir.flows.params import FlowParams, param


class Layout(StrEnum):
    """How the features of one segment are laid out in FHIR."""

    #: one Observation per feature, grouped by a group Observation (``hasMember``); the MII measurement profile
    MEMBERS = "members"
    #: one Observation per segment with the features as ``component`` (compact)
    COMPONENTS = "components"


@dataclass(frozen=True)
class RadiomicsParams(FlowParams):
    """Options of one radiomics run.

    :param settings_preset: shipped pyradiomics settings (``default``, ``all_image_types``).
    :param settings: YAML text merged over the preset's settings.
    :param layout: FHIR layout of the features (:class:`Layout`): ``members`` (one Observation per feature)
        or ``components``.
    :param patient_system: identifier system of PatientID (0010,0020) (None: as the DICOM flow).
    """

    FLOW: ClassVar[str] = "radiomics"

    settings_preset: str = param("default", cli="preset", choices=("default", "all_image_types"))
    settings: str = param("")
    layout: Layout = param(Layout.MEMBERS, cli="layout")
    patient_system: str | None = param(None, cli="patient_system")
