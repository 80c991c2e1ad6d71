"""Kaapana container operator of the ``import-table`` flow."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, ClassVar

from kaapana.blueprints.kaapana_global_variables import DEFAULT_REGISTRY, KAAPANA_BUILD_VERSION

from kaapana_fhir.kaapana.operators.KaapanaFhirBaseOperator import KaapanaFhirBaseOperator


class CsvImportKaapanaOperator(KaapanaFhirBaseOperator):
    """A clinical table (CSV / Excel / Parquet from the input dir or the project bucket) → FHIR resources."""

    TASK: ClassVar[str] = "import-table"
    RAM_MB: ClassVar[tuple[int, int]] = (1000, 4000)
    TIMEOUT: ClassVar[timedelta] = timedelta(minutes=60)

    def __init__(self, dag: Any, name: str = "fhir-table-import", **kwargs: Any) -> None:
        super().__init__(
            dag=dag,
            name=name,
            image=f"{DEFAULT_REGISTRY}/kaapana-fhir:{KAAPANA_BUILD_VERSION}",
            **kwargs,
        )
