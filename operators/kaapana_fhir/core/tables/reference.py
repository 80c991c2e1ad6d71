"""The mapping reference: descriptions, defaults and examples of every key of the table-mapping JSON schema.

:func:`annotate` writes ``title``/``description``/``default``/``examples`` into :data:`mapping.SCHEMA` (JSON-schema
annotations; validation is unchanged). :func:`reference_markdown` renders ``docs/mapping-reference.md`` from the
annotated schema (``python tools/gen_mapping_reference.py``); a unit test fails when the committed page is stale
or a schema key has no description.
"""

from __future__ import annotations

import json
from typing import Any

# section title → (schema object, intro, {key: (description, default or None, example or None)})
_R = "'review' marker (text): a suggestion to check; the import refuses the mapping while any is left"

TOP = ("Top level", "A mapping file is YAML with these keys (`version` and `patient` are required).", {
    "version": ("Format version; always `1`.", None, 1),
    "name": ("Name of the mapping (reports, file-scoped identifier systems).", "the file name", "lung1"),
    "description": ("Free text.", None, "NSCLC-Radiomics clinical data"),
    "review": (_R, None, None),
    "source": ("How the file is read (see *source*).", None, {"format": "csv", "delimiter": ";"}),
    "checks": ("Plausibility checks (see *checks*).", None, {"date_min": "1950-01-01"}),
    "empty_cells": ("What happens to a resource on the server whose cell became empty in a newer file: `keep` "
                    "(leave it) or `retract` (write it again with `status: entered-in-error`).", "keep", "retract"),
    "patient_conflicts": ("A Patient's gender, birth date or deceased value on the server that came from another "
                          "source (another table file, the DICOM flow) and differs from this file: `keep` the "
                          "server's value, `replace` it, or `fail` the import before anything is written. Each "
                          "conflict is listed in the report and the plan with both values and both sources. A value "
                          "this same file set earlier is a correction and always replaced.", "keep", "fail"),
    "patient": ("The patient key and Patient fields (see *patient*).", None, {"key": "PatientID"}),
    "instance_columns": ("Columns that tell repeated rows of one patient apart (visit, REDCap repeat instrument "
                         "and instance, ODM event/form/group repeat keys); part of every resource id.", "[]",
                         ["redcap_repeat_instrument", "redcap_repeat_instance"]),
    "effective": ("Default date of all Observations (see *when*).", None, {"column": "visit_date"}),
    "category": ("Default Observation category code "
                 "(http://terminology.hl7.org/CodeSystem/observation-category).", None, "exam"),
    "value_maps": ("Named value maps, used by `map_ref` (name → value map).", None,
                   {"stage_group": {"I": {"system": "http://snomed.info/sct", "code": "258215001"}}}),
    "observations": ("One entry per mapped column: one Observation per row and column (see *observation*).", "[]",
                     None),
    "conditions": ("Condition resources (see *condition*).", "[]", None),
})
SOURCE = ("source", "Reading the file.", {
    "format": ("`auto` (by name and first bytes), `csv`, `xlsx`, `redcap-csv`, `redcap-json`, `json`, `odm` "
               "(CDISC ODM 1.3.2 XML, one row per ItemGroupData).", "auto", "xlsx"),
    "delimiter": ("CSV delimiter.", "detected from the header line", ";"),
    "encoding": ("CSV text encoding.", "BOM, else UTF-8, else Windows-1252", "latin-1"),
    "sheet": ("Excel sheet name.", "the first sheet", "Clinical"),
    "na_values": ("Cells that mean 'missing' (compared case-insensitively).",
                  '["", "na", "n/a", "nan", "null", "none", "#n/a", "."]', ["", "NA", "unknown"]),
    "date_order": ("Order of `01/02/2020`-style dates: `dmy` or `mdy`.", "dmy", "mdy"),
})
CHECKS = ("checks", "Plausibility checks applied to every cell before anything is written.", {
    "date_min": ("Earliest accepted date (`YYYY-MM-DD` or `today`).", "1900-01-01", "1950-01-01"),
    "date_max": ("Latest accepted date (`YYYY-MM-DD` or `today`).", "today", "2030-12-31"),
})
PATIENT = ("patient", "Exactly one of `key`, `key_columns`, `key_generated` names the patient.", {
    "key": ("Column holding the patient identifier (joins with DICOM PatientID when the identifier systems "
            "agree).", None, "PatientID"),
    "key_columns": ("Two or more columns whose values together identify a patient (joined with `|`).", None,
                    ["site", "local_id"]),
    "key_generated": ("`row-number`: one Patient per row, numbered by row in a file-scoped identifier system "
                      "(for tables without any id; re-sorting the file changes the patients).", None, "row-number"),
    "identifier_system": ("Patient.identifier.system.", "urn:kaapana-fhir:patient-id (key); "
                          "urn:kaapana-fhir:table:<name>:row-number (key_generated)",
                          "https://www.cancerimagingarchive.net/collection/nsclc-radiomics/"),
    "review": (_R, None, None),
    "gender": ("Patient.gender from a column (see *column map*); values must map to male, female, other, unknown.",
               None, {"column": "sex", "map": {"m": "male", "f": "female"}}),
    "birth_date": ("Patient.birthDate from a date column (see *birth_date*).", None, {"column": "dob"}),
    "deceased": ("Patient.deceasedBoolean from a column (see *column map*); map censored/alive to `null`, not "
                 "`false`, unless the value really asserts 'alive'.", None,
                 {"column": "deadstatus.event", "map": {"1": True, "0": None}}),
})
BIRTH = ("birth_date", "Patient.birthDate.", {
    "column": ("Date column.", None, "dob"),
    "review": (_R, None, None),
})
WHEN = ("when", "A date for `effective` / `onset`: from a column, or a fixed date.", {
    "column": ("Date column.", None, "visit_date"),
    "date": ("Fixed date (ISO 8601).", None, "2020-01-01"),
})
CODING = ("coding", "A code: `{system, code, display}`; where a code is expected, a list of codings is allowed.", {
    "system": ("Code system URI.", "the value's `system` for value maps", "http://loinc.org"),
    "code": ("The code (`TODO` is a placeholder the import refuses).", None, "30525-0"),
    "display": ("Display text.", None, "Age"),
    "review": (_R, None, None),
})
COLUMN_MAP = ("column map", "A column whose cells are looked up in a value map (gender, deceased, code_from, "
              "stage, histology).", {
    "column": ("Source column.", None, "gender"),
    "map": ("Value map: cell value (case-insensitive; `3.0` = `3`) → result: a coding, a string, a boolean or "
            "`null` (= absent).", None, {"male": "male", "female": "female"}),
    "map_ref": ("Name of a map in `value_maps` (merged under `map`).", None, "stage_group"),
    "system": ("Default system of the map's codings.", None, "http://snomed.info/sct"),
    "unmapped": ("A value not in the map: `error` (cell error), `text` (CodeableConcept.text only), `absent` "
                 "(no value), `code` (the cell is a code of `system`).", "error", "text"),
    "review": (_R, None, None),
})
VALUE = ("value", "How a cell becomes Observation.value[x].", {
    "type": ("`Quantity`, `decimal`, `integer`, `boolean`, `string`, `CodeableConcept`, `dateTime`.", None,
             "Quantity"),
    "unit": ("UCUM unit code of a Quantity (checked with the UCUM grammar: `kcals` is refused).", None, "kg"),
    "unit_system": ("Unit system.", "http://unitsofmeasure.org", None),
    "unit_code": ("Unit code when it differs from the human-readable `unit`.", "unit", "kg/m2"),
    "unit_aliases": ("Unit spellings accepted after a number in a cell (`72 kg`).", "[]", ["kilogram"]),
    "unit_column": ("Column holding each row's unit (UCUM-checked per cell, after `unit_map`).", None, "lab_unit"),
    "unit_map": ("Cell value of `unit_column` → UCUM code.", None, {"1": "g/dL", "G/l": "g/L"}),
    "min": ("Smallest accepted number.", None, 0),
    "max": ("Largest accepted number.", None, 130),
    "map": ("Value map for CodeableConcept / boolean values (see *column map*).", None,
            {"1": {"code": "LA18976-3", "display": "Current every day smoker"}}),
    "map_ref": ("Name of a map in `value_maps`.", None, "stage_group"),
    "map_file": ("CSV file (`source,code[,display[,system]]`) relative to the mapping.", None, "maps/t_stage.csv"),
    "system": ("Default system of mapped codes.", None, "http://loinc.org"),
    "unmapped": ("See *column map*.", "error", "code"),
    "review": (_R, None, None),
})
OBS = ("observation", "One Observation per row for `column` (none when the cell is empty).", {
    "column": ("Source column (matched case-insensitively).", None, "age"),
    "code": ("Observation.code: a coding or a list of codings (see *coding*).", None,
             {"system": "http://loinc.org", "code": "30525-0", "display": "Age"}),
    "code_from": ("Observation.code from another column of the row (a lab's test name), see *column map*; "
                  "`code` codings are appended.", None, {"column": "lab_test", "map_ref": "lab_tests"}),
    "value": ("Observation.value (see *value*).", None, {"type": "Quantity", "unit": "a"}),
    "category": ("Category code (overrides the top-level one).", None, "laboratory"),
    "effective": ("Observation.effectiveDateTime (see *when*; overrides the top-level one).", None,
                  {"column": "lab_date"}),
    "required": ("An empty cell is an error.", "false", True),
    "empty_cells": ("Overrides the top-level `empty_cells` for this column.", None, "retract"),
    "review": (_R, None, None),
    "components": ("Observation.component entries from other columns (see *component*).", "[]", None),
})
COMPONENT = ("component", "One Observation.component from a column.", {
    "column": ("Source column.", None, "deadstatus.event"),
    "code": ("Component code (see *coding*).", None, {"code": "death-event"}),
    "value": ("See *value*.", None, {"type": "boolean"}),
    "review": (_R, None, None),
})
COND = ("condition", "A Condition per row (or per row where `when_column` is filled).", {
    "name": ("Short name, part of the Condition id (`[A-Za-z0-9_.-]`).", None, "nsclc"),
    "code": ("Condition.code (see *coding*).", None, {"system": "http://snomed.info/sct", "code": "254637007"}),
    "when_column": ("Only rows where this column is filled get the Condition.", None, "diagnosis"),
    "onset": ("Condition.onsetDateTime (see *when*).", None, {"column": "diagnosis_date"}),
    "stage": ("Condition.stage.summary (see *column map*).", None, {"column": "Overall.Stage",
                                                                     "map_ref": "stage_group"}),
    "histology": ("mCODE histology-morphology-behavior extension (see *column map*).", None,
                  {"column": "Histology", "unmapped": "text"}),
    "clinical_status": ("Condition.clinicalStatus code.", "active", "remission"),
    "category": ("`problem-list-item` or `encounter-diagnosis`.", "problem-list-item", None),
    "review": (_R, None, None),
})


def _sections(schema: dict[str, Any]) -> list[tuple[tuple[str, str, dict[str, Any]], dict[str, Any]]]:
    p = schema["properties"]
    obs = p["observations"]["items"]
    coding = p["observations"]["items"]["properties"]["code"]["oneOf"][0]
    return [(TOP, schema), (SOURCE, p["source"]), (CHECKS, p["checks"]), (PATIENT, p["patient"]),
            (BIRTH, p["patient"]["properties"]["birth_date"]), (WHEN, p["effective"]), (CODING, coding),
            (COLUMN_MAP, p["patient"]["properties"]["gender"]), (VALUE, obs["properties"]["value"]), (OBS, obs),
            (COMPONENT, obs["properties"]["components"]["items"]), (COND, p["conditions"]["items"])]


def annotate(schema: dict[str, Any]) -> list[str]:
    """Write the descriptions into ``schema``; returns schema keys without a description (should be empty)."""
    missing = []
    for i in range(len(_sections(schema))):
        (title, intro, docs), obj = _sections(schema)[i]  # re-resolved: earlier sections replaced sub-schemas
        obj["title"], obj["description"] = title, intro
        for key, shared in list(obj.get("properties", {}).items()):
            if key not in docs:
                missing.append(f"{title}.{key}")
                continue
            sub = obj["properties"][key] = dict(shared)  # sub-schemas are shared: annotate a copy
            desc, default, example = docs[key]
            sub["description"] = desc
            if default is not None:
                sub["default"] = default
            if example is not None:
                sub["examples"] = [example]
        missing += [f"{title}.{k} (documented, not in the schema)" for k in docs if k not in obj.get("properties", {})]
    return missing


def _type(sub: dict[str, Any]) -> str:
    if "enum" in sub:
        return "one of " + ", ".join(json.dumps(v) for v in sub["enum"])
    if "const" in sub:
        return json.dumps(sub["const"])
    if "oneOf" in sub and "type" not in sub:
        return "coding or list of codings"
    t = sub.get("type", "object")
    if isinstance(t, list):
        return " or ".join(t)
    if t == "array":
        return f"list of {sub.get('items', {}).get('type', 'object')}"
    return str(t)


def _cell(text: Any) -> str:
    s = text if isinstance(text, str) else json.dumps(text, ensure_ascii=False)
    return s.replace("|", "\\|").replace("\n", " ")


def reference_markdown(schema: dict[str, Any]) -> str:
    """``docs/mapping-reference.md`` from the annotated schema."""
    out = ["# Table mapping reference", "",
           "<!-- Generated by tools/gen_mapping_reference.py from the JSON schema in "
           "operators/kaapana_fhir/core/tables/mapping.py; do not edit by hand. -->", "",
           "A mapping tells `kaapana-fhir import-table` how a clinical table (CSV, Excel, REDCap export, CDISC ODM) "
           "becomes FHIR R4 Patient, Observation and Condition resources. Start one with "
           "`kaapana-fhir mapping init FILE` (or `--redcap DICTIONARY`), fill in every `TODO` (or let `--local-codes` "
           "give unknown columns codes of a local code system), check and delete every `review:` line, then import. "
           "Walk-through: [tutorial-tables.md](tutorial-tables.md). A complete example: "
           "`operators/kaapana_fhir/data/mappings/lung1.yaml`.", "",
           "Before anything is written, the import checks the whole file: every mapped column must exist; units are "
           "UCUM codes; dates lie in the `checks` window; values are in their value maps; one error is reported per "
           "cell (row, column, value, rule). A mapping with `TODO` or `review:` left is refused with the list of "
           "what to fill in.", ""]
    for (title, intro, _docs), obj in _sections(schema):
        out += [f"## {title}", "", intro, ""]
        req = set(obj.get("required", []))
        out += ["| key | type | required | default | description | example |", "|---|---|---|---|---|---|"]
        for key, sub in obj.get("properties", {}).items():
            ex = sub.get("examples", [None])[0]
            out.append(f"| `{key}` | {_cell(_type(sub))} | {'yes' if key in req else ''} | "
                       f"{_cell(sub['default']) if 'default' in sub else ''} | {_cell(sub.get('description', ''))} | "
                       f"{'`' + _cell(ex) + '`' if ex is not None else ''} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"
