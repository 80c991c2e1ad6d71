"""Mode parameters are Enums: values are matched case-insensitively, stored as the Enum member, and anything
else is a ConfigError naming the flow, the key, where the value came from and the allowed values."""

from __future__ import annotations

import json

import pytest

from kaapana_fhir.core.dicom.mapping import Profile
from kaapana_fhir.exceptions import ConfigError
from kaapana_fhir.flows.dicom_to_fhir.params import DicomToFhirParams, MissingSeries, WadoMode
from kaapana_fhir.flows.radiomics.params import Layout, RadiomicsParams


def test_mode_values_become_enum_members_case_insensitively() -> None:
    p = DicomToFhirParams.from_conf({"workflow_form": {"wado": "Always", "missing_series": "SKIP",
                                                       "profile": "Core"}})
    assert p.wado is WadoMode.ALWAYS and p.missing_series is MissingSeries.SKIP and p.profile is Profile.CORE
    assert p.mapping_options().profile is Profile.CORE
    # members are strings: comparisons, JSON and the container env keep the plain value
    assert p.wado == "always" and json.dumps({"wado": p.wado}) == '{"wado": "always"}'
    assert p.to_env() == {"WADO": "always", "MISSING_SERIES": "skip", "PROFILE": "core"}
    assert DicomToFhirParams.from_env(p.to_env()) == p


@pytest.mark.parametrize(("cls", "key", "value"), [
    (DicomToFhirParams, "wado", "sometimes"),
    (DicomToFhirParams, "missing_series", "ignore"),
    (DicomToFhirParams, "profile", "mii-2025"),
    (RadiomicsParams, "layout", "columns"),
    (DicomToFhirParams, "wado", ["auto"]),
])
def test_unknown_mode_is_a_config_error_naming_key_source_and_choices(cls: type, key: str, value: object) -> None:
    with pytest.raises(ConfigError) as exc:
        cls.from_conf({"workflow_form": {key: value}})
    text = str(exc.value)
    assert repr(key) in text and "workflow_form" in text, text
    if isinstance(value, str):
        field_type = {"wado": WadoMode, "missing_series": MissingSeries, "profile": Profile, "layout": Layout}[key]
        assert all(m.value in text for m in field_type), text


def test_defaults_are_members() -> None:
    assert DicomToFhirParams().wado is WadoMode.AUTO and RadiomicsParams().layout is Layout.MEMBERS
    assert DicomToFhirParams().profile is Profile.MII and DicomToFhirParams().dose_reports is True


def test_every_preset_the_forms_offer_is_accepted_by_the_import() -> None:
    """The watcher's form offered ``odm`` while the import's Params refused it: a triggered ODM import failed."""
    from kaapana_fhir.flows.tables.params import PRESETS, TableImportParams

    assert "odm" in PRESETS
    for name in PRESETS:
        assert TableImportParams.from_conf({"preset": name}).preset == name
    with pytest.raises(ConfigError, match="odm"):  # the error lists what is allowed
        TableImportParams.from_conf({"preset": "omop"})
