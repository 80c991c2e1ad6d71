"""Parameters of the clinical-table import (``workflow_form`` keys of ``dags/dag_fhir_table_import.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from kaapana_fhir.flows.params import FlowParams, param

#: shipped mapping presets ("": none; ``redcap`` needs the data dictionary beside the table, ``odm`` reads the
#: mapping from the ODM file's own metadata); the import and watcher forms offer exactly these
PRESETS = ("", "lung1", "redcap", "odm")


@dataclass(frozen=True)
class TableImportParams(FlowParams):
    """Options of one table import.

    :param object_key: object key of the table in the bucket (empty: table files of the run's input dir).
    :param bucket: bucket (empty: the project's bucket ``project_form.s3_bucket``).
    :param mapping: mapping YAML: an object key / a file name beside the table, or YAML text.
    :param preset: shipped mapping preset (:data:`PRESETS`: ``lung1``, ``redcap``, ``odm``), used when no mapping is
        given.
    :param skip_invalid_rows: import the valid rows and report the rest instead of rejecting the file.
    """

    FLOW: ClassVar[str] = "import-table"

    object_key: str = param("")
    bucket: str = param("")
    mapping: str = param("", cli="mapping")
    preset: str = param("", cli="preset", choices=PRESETS)
    skip_invalid_rows: bool = param(False, cli="skip_invalid_rows")
