"""Clinical tables (CSV, Excel, REDCap) → FHIR R4 Patient / Observation / Condition (pure, no I/O).

Modules: :mod:`.reader` (files → rows), :mod:`.values` (cell parsing), :mod:`.mapping` (YAML mapping,
JSON schema, presets), :mod:`.redcap` (mapping from a data dictionary), :mod:`.build` (row → resources,
deterministic ids), :mod:`.engine` (validate-all then stream entries, report), :mod:`.suggest` (profile and
catalogue suggestions for ``mapping init``), :mod:`.init` (``mapping init`` for tables, REDCap, ODM),
:mod:`.odm` (CDISC ODM 1.3.2), :mod:`.units` (UCUM checks), :mod:`.reference` (the documented schema).
"""

from kaapana_fhir.core.tables.build import RowIssue, TableMapper
from kaapana_fhir.core.tables.engine import (
    ScanResult,
    TableRejected,
    iter_entries,
    iter_patient_entries,
    report_of,
    scan,
)
from kaapana_fhir.core.tables.mapping import load_mapping, load_preset, validate_mapping
from kaapana_fhir.core.tables.reader import Table, open_table
from kaapana_fhir.core.tables.redcap import derive_mapping

__all__ = ["RowIssue", "ScanResult", "Table", "TableMapper", "TableRejected", "derive_mapping", "iter_entries",
           "iter_patient_entries", "load_mapping", "load_preset", "open_table", "report_of", "scan", "validate_mapping"]
