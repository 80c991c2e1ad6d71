"""Kaapana container operator of the ``cohort`` flow."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, ClassVar

from kaapana.blueprints.kaapana_global_variables import DEFAULT_REGISTRY, KAAPANA_BUILD_VERSION

from kaapana_fhir.kaapana.operators.KaapanaFhirBaseOperator import KaapanaFhirBaseOperator


class FhirQueryKaapanaOperator(KaapanaFhirBaseOperator):
    """A FHIR cohort query → tables, the series dataset and the dashboard in the output dir (and the
    project bucket); ``downstream.json`` when a downstream workflow is named.
    """

    TASK: ClassVar[str] = "cohort"
    RAM_MB: ClassVar[tuple[int, int]] = (1000, 4000)
    TIMEOUT: ClassVar[timedelta] = timedelta(minutes=30)

    def __init__(self, dag: Any, name: str = "fhir-cohort", **kwargs: Any) -> None:
        super().__init__(
            dag=dag,
            name=name,
            image=f"{DEFAULT_REGISTRY}/kaapana-fhir:{KAAPANA_BUILD_VERSION}",
            **kwargs,
        )
