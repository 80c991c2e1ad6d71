"""Kaapana container operator of the ``radiomics`` flow."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, ClassVar

from kaapana.blueprints.kaapana_global_variables import DEFAULT_REGISTRY, KAAPANA_BUILD_VERSION

from kaapana_fhir.kaapana.operators.KaapanaFhirBaseOperator import KaapanaFhirBaseOperator


class RadiomicsToFhirKaapanaOperator(KaapanaFhirBaseOperator):
    """SEG series (+ referenced image) → pyradiomics features → FHIR Observations."""

    TASK: ClassVar[str] = "radiomics"
    RAM_MB: ClassVar[tuple[int, int]] = (3000, 8000)
    TIMEOUT: ClassVar[timedelta] = timedelta(minutes=120)

    def __init__(self, dag: Any, name: str = "radiomics-to-fhir", **kwargs: Any) -> None:
        super().__init__(
            dag=dag,
            name=name,
            image=f"{DEFAULT_REGISTRY}/kaapana-fhir:{KAAPANA_BUILD_VERSION}",
            **kwargs,
        )
