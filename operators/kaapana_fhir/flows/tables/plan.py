"""``import-table --plan``: what an import would create, update, leave unchanged or retract, without writing.

The whole file is validated exactly as for an import (invalid cells and unfinished mappings are refused the
same way); then the entries are compared, chunk by chunk (one ``_id`` search per resource type and chunk),
with what the server holds:

* **create**: no resource with that id;
* **update**: it exists and differs in what the table writes (for a Patient only the elements the table sets:
  identifier, gender, birthDate, deceased; other elements, e.g. from DICOM, are kept by the import anyway);
* **unchanged**: it exists with the same content (``meta`` and narrative ignored);
* **retract**: ``empty_cells: retract`` and the Observation of an emptied cell exists and is not yet retracted.

Patients whose gender/birth date/deceased on the server came from another source (another file, DICOM) and
disagree with the file are listed under ``conflicts`` with both values and both sources, and the mapping's
``patient_conflicts`` policy says what the import would do; values this same file set earlier are corrections.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from kaapana_fhir.clients.protocols import FhirApi
from kaapana_fhir.core.bundle import chunked
from kaapana_fhir.core.patient import ConflictPolicy
from kaapana_fhir.core.tables import TableMapper, iter_entries, scan
from kaapana_fhir.core.tables.engine import RETRACT, TableRejected, report_of
from kaapana_fhir.core.tables.reader import Table
from kaapana_fhir.flows.tables.flow import ImportReport, merge_with_server, search_ids

PATIENT_FIELDS = ("gender", "birthDate", "deceasedBoolean")


@dataclass
class PlanCounts:
    """What an import would do to the resources of one type."""

    create: int = 0
    update: int = 0
    unchanged: int = 0
    retract: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(kw_only=True)
class TablePlan(ImportReport):
    """The plan report (``--plan``): the validation summary of :class:`ImportReport` (status ``planned``), the
    counts per resource type, and the Patient conflicts with another source (at most 200)."""

    plan: dict[str, PlanCounts] = field(default_factory=dict)
    conflicts: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form: the report's keys, then ``plan`` before the conflict policy and corrections, and
        ``conflicts`` only when there are any."""
        out = super().as_dict()
        out.pop("plan", None)
        out.pop("conflicts", None)
        tail = {k: out.pop(k) for k in ("patient_conflicts_policy", "patient_corrections") if k in out}
        out["plan"] = {rtype: c.as_dict() for rtype, c in self.plan.items()}
        out.update(tail)
        if self.conflicts:
            out["conflicts"] = list(self.conflicts)
        return out


def _content(r: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in r.items() if k not in ("meta", "text")}, sort_keys=True)


def classify(ours: dict[str, Any], current: dict[str, Any] | None) -> str:
    """``create`` / ``update`` / ``unchanged`` for one resource against the server's current version."""
    if current is None:
        return "create"
    if ours["resourceType"] == "Patient":
        idents = current.get("identifier", [])
        same = all(i in idents for i in ours.get("identifier", [])) and all(
            ours.get(f) == current.get(f) for f in PATIENT_FIELDS if f in ours)
        return "unchanged" if same else "update"
    return "unchanged" if _content(ours) == _content(current) else "update"


def plan_table(table: Table, mapping: dict[str, Any], client: FhirApi, *, skip_invalid_rows: bool = False,
               chunk_size: int = 200) -> TablePlan:
    """The plan report: ``plan[resourceType]`` (:class:`PlanCounts`: create, update, unchanged, retract),
    ``conflicts``, and the validation summary. Nothing is written. Raises :class:`TableRejected` like an import
    would."""
    t0 = time.perf_counter()
    mapper = TableMapper(mapping, table_name=table.name)
    scanned = scan(table, mapper)
    name = str(mapping.get("name", "mapping"))
    if scanned.issue_count and not skip_invalid_rows:
        refused = report_of(table.name, name, scanned, status="rejected", duration_s=time.perf_counter() - t0)
        first = scanned.issues[0]
        raise TableRejected(f"{table.name}: {scanned.issue_count} invalid cell(s); first: row {first.row}, column "
                            f"{first.column!r}: {first.rule} (plan not computed)", refused)
    plan: dict[str, PlanCounts] = {}
    conflicts: list[dict[str, Any]] = []
    corrections = 0
    policy = ConflictPolicy(mapping.get("patient_conflicts", "keep"))
    for chunk in chunked(iter_entries(table, mapper, scanned, skip_invalid_rows=True), chunk_size):
        by_type: dict[str, list[dict[str, Any]]] = {}
        for e in chunk:
            by_type.setdefault(e["resource"]["resourceType"], []).append(e)
        for rtype, entries in by_type.items():
            ids = sorted({e["resource"]["id"] for e in entries})
            current = {r["id"]: r for r in search_ids(client, rtype, ids)}
            counts = plan.setdefault(rtype, PlanCounts())
            for e in entries:
                ours, cur = e["resource"], current.get(e["resource"]["id"])
                if e.get(RETRACT):
                    if cur is not None and cur.get("status") != "entered-in-error":
                        counts.retract += 1
                    continue
                kind = classify(ours, cur)
                setattr(counts, kind, getattr(counts, kind) + 1)
                if rtype == "Patient" and cur is not None:
                    merge = merge_with_server(ours, cur, policy)
                    corrections += len(merge.corrected)
                    for c in merge.conflicts:
                        if len(conflicts) < 200:
                            conflicts.append(c.as_dict(ours["id"]) | {"key": ours["identifier"][0]["value"]})
                    if merge.conflicts and policy is not ConflictPolicy.REPLACE and kind == "update" and \
                            _content(merge.resource) == _content(cur):
                        counts.update -= 1  # the conflicting value is kept: nothing changes
                        counts.unchanged += 1
    rep = TablePlan(**report_of(table.name, name, scanned, status="planned", duration_s=time.perf_counter() - t0,
                                skip_invalid_rows=skip_invalid_rows))
    rep.plan = plan
    rep.patient_conflicts_policy = policy.value
    rep.patient_corrections = corrections
    rep.conflicts = conflicts
    return rep


def format_plan(rep: TablePlan) -> str:
    """The plan as a short text table."""
    lines = [f"plan for {rep.file} ({rep.rows_read} rows; nothing written):",
             f"{'resource':<14} {'create':>8} {'update':>8} {'unchanged':>10} {'retract':>8}"]
    for rtype in sorted(rep.plan):
        n = rep.plan[rtype]
        lines.append(f"{rtype:<14} {n.create:>8} {n.update:>8} {n.unchanged:>10} {n.retract:>8}")
    conflicts = rep.conflicts
    policy = rep.patient_conflicts_policy or "keep"
    if conflicts:
        verb = {"keep": "the server's value would be kept", "replace": "the file's value would replace it",
                "fail": "the import would be refused"}.get(policy, policy)
        lines.append(f"{len(conflicts)} Patient conflict(s) with another source (patient_conflicts: {policy}: "
                     f"{verb}):")
    for c in conflicts[:20]:
        lines.append(f"conflict: {c['patient']} ({c['key']}): {c['element']} {c['existing']!r} from "
                     f"{c['existing_source'] or 'another source (DICOM or an earlier import)'}, {c['incoming']!r} "
                     f"from {c['incoming_source']}")
    if rep.patient_corrections:
        lines.append(f"{rep.patient_corrections} Patient value(s) corrected (set earlier by the same file)")
    return "\n".join(lines)
