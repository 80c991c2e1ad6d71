"""REDCap: derive a table mapping from a project's data dictionary (pure).

The dictionary is REDCap's "Data Dictionary" CSV (columns ``Variable / Field Name``, ``Field Type``,
``Field Label``, ``Choices, Calculations, OR Slider Labels``, ``Text Validation Type OR Show Slider
Number`` ...) or the API's metadata export (``field_name``, ``field_type``, ...). Rules:

* the first field is the record id → ``patient.key``;
* ``radio``/``dropdown`` choices ``1, Male | 2, Female`` → CodeableConcept value maps (system
  ``urn:kaapana-fhir:redcap:<field>``); a ``sex``/``gender`` field whose labels are male/female becomes
  ``Patient.gender``; a date field named ``dob``/``birth_date``/``date_of_birth`` becomes ``Patient.birthDate``;
* ``yesno``/``truefalse`` → boolean; ``checkbox`` → one boolean Observation per option (``field___code``);
* ``text`` validation ``integer`` → integer, ``number*`` → decimal, ``date_*``/``datetime_*`` → dateTime,
  other text/``notes`` → string; ``calc`` → decimal, ``slider`` → integer; ``descriptive``/``file``/
  ``signature`` are skipped;
* repeating instruments: ``redcap_event_name``, ``redcap_repeat_instrument`` and ``redcap_repeat_instance``
  (those present in the export header) are instance columns, so each instance has its own resource ids.
"""

from __future__ import annotations

import csv
import io
import re
from typing import Any

from kaapana_fhir.core.identifiers import DEFAULT_PATIENT_SYSTEM
from kaapana_fhir.exceptions import ConfigError

CS_REDCAP_FIELD = "urn:kaapana-fhir:CodeSystem:redcap-field"
INSTANCE_COLUMNS = ("redcap_event_name", "redcap_repeat_instrument", "redcap_repeat_instance")
_ALIASES = {
    "variable / field name": "field_name", "form name": "form_name", "field type": "field_type",
    "field label": "field_label", "choices, calculations, or slider labels": "choices",
    "select_choices_or_calculations": "choices",
    "text validation type or show slider number": "validation",
    "text_validation_type_or_show_slider_number": "validation",
}
_TAG_RE = re.compile(r"<[^>]+>")
_BIRTH = ("dob", "birth_date", "date_of_birth", "birthdate", "birthday")
_GENDERS = {"male": "male", "m": "male", "man": "male", "female": "female", "f": "female", "woman": "female",
            "other": "other", "diverse": "other", "unknown": "unknown"}


def parse_dictionary(text: str, *, name: str = "dictionary") -> list[dict[str, str]]:
    """Rows of a REDCap data dictionary CSV with normalised keys (field_name, field_type, ...)."""
    rows = []
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    for rec in reader:
        norm = {_ALIASES.get((k or "").strip().lower(), (k or "").strip().lower()): (v or "").strip()
                for k, v in rec.items()}
        rows.append(norm)
    if not rows or "field_name" not in rows[0] or "field_type" not in rows[0]:
        raise ConfigError(f"REDCap dictionary {name}: needs columns 'Variable / Field Name' and 'Field Type' "
                          "(rule: REDCap data dictionary CSV)")
    return rows


def parse_choices(text: str, *, field: str = "") -> list[tuple[str, str]]:
    """``"1, Male | 2, Female"`` → ``[("1", "Male"), ("2", "Female")]``."""
    out = []
    for part in text.split("|"):
        if not part.strip():
            continue
        code, sep, label = part.partition(",")
        if not sep:
            raise ConfigError(f"REDCap field {field!r}: choice {part.strip()!r} is not 'code, label' "
                              "(rule: choices 'code, label | code, label')")
        out.append((code.strip(), label.strip()))
    return out


def _label(text: str) -> str:
    return _TAG_RE.sub("", text).strip()[:200]


def derive_mapping(dictionary_text: str, *, header: list[str] | None = None, name: str = "redcap",
                   identifier_system: str = DEFAULT_PATIENT_SYSTEM) -> dict[str, Any]:
    """A version-1 mapping (a dict, as YAML would give) for a REDCap project's records export."""
    fields = parse_dictionary(dictionary_text, name=name)
    present = {h.lower() for h in header} if header is not None else None
    key = fields[0]["field_name"]
    patient: dict[str, Any] = {"key": key, "identifier_system": identifier_system}
    observations: list[dict[str, Any]] = []
    date_order = "dmy"

    def obs(column: str, label: str, value: dict[str, Any]) -> None:
        if present is not None and column.lower() not in present:
            return
        observations.append({"column": column, "code": {"system": CS_REDCAP_FIELD, "code": column,
                                                        "display": label or column}, "value": value})

    for f in fields[1:]:
        fname, ftype = f["field_name"], f["field_type"].lower()
        label = _label(f.get("field_label", ""))
        val = f.get("validation", "").lower()
        if ftype in ("descriptive", "file", "signature", "sql"):
            continue
        if ftype in ("radio", "dropdown"):
            choices = parse_choices(f.get("choices", ""), field=fname)
            genders = {c: _GENDERS.get(lbl.lower()) for c, lbl in choices}
            if fname.lower() in ("sex", "gender") and all(genders.values()) and "gender" not in patient:
                patient["gender"] = {"column": fname, "map": genders}
                continue
            obs(fname, label, {"type": "CodeableConcept", "system": f"urn:kaapana-fhir:redcap:{fname}",
                               "map": {c: {"code": c, "display": lbl} for c, lbl in choices}})
        elif ftype in ("yesno", "truefalse"):
            obs(fname, label, {"type": "boolean", "map": {"1": True, "0": False}})
        elif ftype == "checkbox":
            for c, lbl in parse_choices(f.get("choices", ""), field=fname):
                col = f"{fname}___{c.lower().replace('-', '_')}"
                obs(col, f"{label}: {lbl}", {"type": "boolean", "map": {"1": True, "0": False}})
        elif ftype == "calc":
            obs(fname, label, {"type": "decimal"})
        elif ftype == "slider":
            obs(fname, label, {"type": "integer"})
        elif ftype in ("text", "notes"):
            if val.startswith(("date", "datetime")):
                if val.endswith("_mdy"):
                    date_order = "mdy"
                if fname.lower() in _BIRTH and "birth_date" not in patient:
                    patient["birth_date"] = {"column": fname}
                else:
                    obs(fname, label, {"type": "dateTime"})
            elif val == "integer":
                obs(fname, label, {"type": "integer"})
            elif val.startswith("number"):
                obs(fname, label, {"type": "decimal"})
            else:
                obs(fname, label, {"type": "string"})
    mapping: dict[str, Any] = {
        "version": 1, "name": name, "description": "derived from a REDCap data dictionary",
        "source": {"format": "auto", "date_order": date_order}, "patient": patient,
        "category": "survey", "observations": observations}
    inst = [c for c in INSTANCE_COLUMNS if present is None or c in present]
    if inst and present is not None:
        mapping["instance_columns"] = inst
    return mapping
