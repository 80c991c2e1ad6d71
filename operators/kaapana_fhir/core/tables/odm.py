"""CDISC ODM 1.3.2 → the table mapping model (pure).

**Reading** (:func:`read_odm`): ``ClinicalData → SubjectData → StudyEventData → FormData → ItemGroupData →
ItemData`` becomes one row per ItemGroupData: columns ``SubjectKey``, ``StudyEventOID``, ``StudyEventRepeatKey``,
``FormOID``, ``FormRepeatKey``, ``ItemGroupOID``, ``ItemGroupRepeatKey`` and one column per ItemDef OID. Rows are
numbered in document order (row 2 = the first ItemGroupData), so errors say "row N, column <ItemOID>". The XML is
read safely and streaming: ``defusedxml`` with DTDs, entities and external references forbidden (a DOCTYPE is
refused), elements are dropped as soon as they are read. An ItemData whose ItemOID is not declared in the
MetaDataVersion is an error naming the subject and OID. REDCap's ODM export ("CDISC ODM (XML)") is read the same
way (its ``redcap:`` attributes are ignored).

**Deriving a mapping** (:func:`derive_mapping`, ``mapping init x.odm.xml``, preset ``odm``): the MetaDataVersion's
ItemDefs, CodeLists, MeasurementUnits and ``Alias`` elements: ``Alias Context="LOINC"|"SNOMED"|"UCUM"|...``
on an ItemDef codes the Observation, on a CodeListItem/EnumeratedItem its answer; a CodeList becomes a value map
(a value not in the list is a cell error); ``integer``/``float`` items with a MeasurementUnit become Quantities
(UCUM-checked); date items dates; sex and birth-date items go to the Patient. Repeating item groups, forms and
events are instances (``instance_columns``), so each repeat has its own resources.

odmlib (PyPI) was considered: it loads the whole document into objects with the standard ``ElementTree`` parser
(no DTD refusal) and XML-schema validation; a streaming, defused reader of the subset we need fits better.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kaapana_fhir.core import codes
from kaapana_fhir.core.tables.mapping import slug
from kaapana_fhir.core.tables.reader import Table
from kaapana_fhir.core.tables.redcap import _GENDERS, ONTOLOGIES
from kaapana_fhir.core.tables.units import guess_ucum, ucum_problem
from kaapana_fhir.exceptions import MappingError

KEY_COLUMNS = ("SubjectKey", "StudyEventOID", "StudyEventRepeatKey", "FormOID", "FormRepeatKey", "ItemGroupOID",
               "ItemGroupRepeatKey")
INSTANCE_COLUMNS = KEY_COLUMNS[1:]
#: largest ODM file read (bytes; checked before parsing)
MAX_ODM_BYTES = 512 * 1024 * 1024
_BIRTH = re.compile(r"(brthdtc|birth|dob|geburt)", re.I)
_SEX = re.compile(r"^(sex|gender|geschlecht)$|(^|[^a-z])sex([^a-z]|$)", re.I)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


@dataclass
class ItemDef:
    oid: str
    name: str
    data_type: str
    question: str = ""
    codelist: str | None = None
    unit: str | None = None
    aliases: list[tuple[str, str]] = field(default_factory=list)
    extra: dict[str, str] = field(default_factory=dict)  # vendor attributes (REDCap: FieldNote, FieldAnnotation)


@dataclass
class CodeList:
    oid: str
    name: str
    items: dict[str, tuple[str, list[tuple[str, str]]]] = field(default_factory=dict)  # value → (decode, aliases)


@dataclass
class Metadata:
    study_oid: str = ""
    study_name: str = ""
    items: dict[str, ItemDef] = field(default_factory=dict)
    codelists: dict[str, CodeList] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    unit_aliases: dict[str, str] = field(default_factory=dict)
    groups: dict[str, list[str]] = field(default_factory=dict)
    record_id_field: str = ""


def _open(source: Any) -> Any:
    size = len(source) if isinstance(source, bytes) else os.path.getsize(source)
    if size > MAX_ODM_BYTES:
        raise MappingError(f"ODM file is {size} bytes (rule: at most {MAX_ODM_BYTES} bytes)")
    return io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115


def _events(source: Any, name: str) -> Iterator[tuple[str, Any]]:
    """``(event, element)`` of a defused, DTD-free streaming parse; errors name the file and the rule."""
    from xml.etree.ElementTree import ParseError

    from defusedxml import DefusedXmlException
    from defusedxml.ElementTree import iterparse

    fh = _open(source)
    try:
        try:
            yield from iterparse(fh, events=("start", "end"), forbid_dtd=True, forbid_entities=True,
                                 forbid_external=True)
        except DefusedXmlException as exc:
            raise MappingError(f"{name}: {type(exc).__name__} (rule: ODM XML without DTD/DOCTYPE, entities or "
                               "external references)") from None
        except ParseError as exc:
            raise MappingError(f"{name}: not well-formed XML: {exc} (rule: well-formed ODM XML)") from None
    finally:
        fh.close()


def _text_of(el: Any) -> str:
    """First TranslatedText (or the text) below ``el``, whitespace collapsed."""
    for sub in el.iter():
        if _local(sub.tag) == "TranslatedText" and (sub.text or "").strip():
            return re.sub(r"\s+", " ", sub.text).strip()
    return ""


def read_metadata(source: Any, *, name: str = "odm") -> Metadata:
    """The Study's MetaDataVersion (first one) and units; stops at the first ClinicalData."""
    md = Metadata()
    for ev, el in _events(source, name):
        tag = _local(el.tag)
        if ev == "start":
            if tag == "ClinicalData":
                break
            if tag == "Study" and not md.study_oid:
                md.study_oid = el.get("OID", "")
            continue
        if tag == "StudyName" and not md.study_name:
            md.study_name = (el.text or "").strip()
        elif tag == "MeasurementUnit":
            oid = el.get("OID", "")
            md.units[oid] = _text_of(el) or el.get("Name", "")
            for a in el:
                if _local(a.tag) == "Alias" and a.get("Context", "").upper() == "UCUM":
                    md.unit_aliases[oid] = a.get("Name", "")
        elif tag == "MetaDataVersion":
            md.record_id_field = next((v for k, v in el.attrib.items() if _local(k) == "RecordIdField"), "")
        elif tag == "ItemGroupDef":
            md.groups[el.get("OID", "")] = [r.get("ItemOID", "") for r in el if _local(r.tag) == "ItemRef"]
        elif tag == "ItemDef":
            item = ItemDef(el.get("OID", ""), el.get("Name", ""), el.get("DataType", "text").lower(),
                           extra={_local(k): v for k, v in el.attrib.items() if k.startswith("{")})
            for sub in el:
                st = _local(sub.tag)
                if st == "Question":
                    item.question = _text_of(sub)
                elif st == "CodeListRef":
                    item.codelist = sub.get("CodeListOID")
                elif st == "MeasurementUnitRef":
                    item.unit = sub.get("MeasurementUnitOID")
                elif st == "Alias":
                    item.aliases.append((sub.get("Context", ""), sub.get("Name", "")))
            md.items[item.oid] = item
            el.clear()
        elif tag == "CodeList":
            cl = CodeList(el.get("OID", ""), el.get("Name", ""))
            for sub in el:
                st = _local(sub.tag)
                if st in ("CodeListItem", "EnumeratedItem"):
                    aliases = [(a.get("Context", ""), a.get("Name", "")) for a in sub if _local(a.tag) == "Alias"]
                    cl.items[sub.get("CodedValue", "")] = (_text_of(sub) or sub.get("CodedValue", ""), aliases)
            md.codelists[cl.oid] = cl
            el.clear()
    if not md.items:
        raise MappingError(f"{name}: no ItemDef in a MetaDataVersion (rule: ODM with Study/MetaDataVersion)")
    return md


def read_odm(source: Any, *, name: str = "odm") -> Table:
    """An ODM file's ClinicalData as a :class:`Table` (one row per ItemGroupData; see the module doc)."""
    md = read_metadata(source, name=name)
    header = [*KEY_COLUMNS, *md.items]

    def rows() -> Iterator[tuple[int, dict[str, Any]]]:
        ctx: dict[str, str] = {}
        row: dict[str, Any] | None = None
        n = 1
        for ev, el in _events(source, name):
            tag = _local(el.tag)
            if ev == "start":
                if tag == "SubjectData":
                    ctx = {"SubjectKey": el.get("SubjectKey", "")}
                elif tag == "StudyEventData":
                    ctx.update(StudyEventOID=el.get("StudyEventOID", ""),
                               StudyEventRepeatKey=el.get("StudyEventRepeatKey", ""))
                elif tag == "FormData":
                    ctx.update(FormOID=el.get("FormOID", ""), FormRepeatKey=el.get("FormRepeatKey", ""))
                elif tag == "ItemGroupData":
                    n += 1
                    row = {**ctx, "ItemGroupOID": el.get("ItemGroupOID", ""),
                           "ItemGroupRepeatKey": el.get("ItemGroupRepeatKey", "")}
                continue
            if tag.startswith("ItemData") and row is not None:
                oid = el.get("ItemOID", "")
                if oid not in md.items:
                    raise MappingError(f"{name}: row {n}: subject {ctx.get('SubjectKey')!r}, ItemGroupData "
                                       f"{row.get('ItemGroupOID')!r}: ItemOID {oid!r} is not declared in the "
                                       "MetaDataVersion (rule: every ItemData refers to an ItemDef)")
                value = el.get("Value")
                if value is None:
                    value = el.text or ""
                if el.get("IsNull", "").lower() == "yes":
                    value = ""
                row[oid] = value
            elif tag == "ItemGroupData" and row is not None:
                yield n, row
                row = None
                el.clear()
            elif tag in ("SubjectData", "ClinicalData"):
                el.clear()

    return Table(name, header, rows)


def _alias_codings(aliases: list[tuple[str, str]], display: str) -> list[dict[str, Any]]:
    out = []
    for ctx, value in aliases:
        system = ONTOLOGIES.get(re.sub(r"[^A-Z0-9]", "", ctx.upper()))
        if system and value and system != codes.UCUM:
            out.append({"system": system, "code": value, "display": display})
    return out


def derive_mapping(source: Any, *, name: str = "odm", header: list[str] | None = None,
                   review: bool = False) -> dict[str, Any]:
    """A version-1 mapping (dict) for an ODM file, derived from its MetaDataVersion."""
    from kaapana_fhir.core.tables.redcap import annotation_codes, clean
    from kaapana_fhir.core.tables.units import unit_from_label

    md = read_metadata(source, name=name)
    study = slug(md.study_oid or md.study_name or Path(name).stem)
    date_types = ("date", "datetime", "partialdate", "partialdatetime")
    group_date: dict[str, str] = {}
    for members in md.groups.values():
        dates = [o for o in members if o in md.items and md.items[o].data_type in date_types
                 and not _BIRTH.search(f"{o} {md.items[o].name}")]
        if len(dates) == 1:
            for o in members:
                if o != dates[0]:
                    group_date.setdefault(o, dates[0])
    patient: dict[str, Any] = {"key": "SubjectKey", "identifier_system": f"urn:kaapana-fhir:odm:{study}:subject"}
    observations: list[dict[str, Any]] = []
    notes: list[str] = []
    for item in md.items.values():
        if item.oid == md.record_id_field or (md.record_id_field and item.oid.endswith("_complete")):
            continue  # REDCap: the record id is the SubjectKey; *_complete is the form status
        label = clean(item.question) or item.name or item.oid
        cl = md.codelists.get(item.codelist or "")
        if item.codelist and cl is None:
            notes.append(f"ItemDef {item.oid}: CodeList {item.codelist!r} is not declared; values read as text")
        lname = f"{item.oid} {item.name}"
        if item.data_type in ("date", "partialdate") and "birth_date" not in patient and _BIRTH.search(lname):
            patient["birth_date"] = {"column": item.oid}
            continue
        if cl is not None and "gender" not in patient and (_SEX.search(item.name) or _SEX.search(item.oid)):
            gmap = {v: _GENDERS.get(d.strip().lower(), _GENDERS.get(v.strip().lower(), "unknown"))
                    for v, (d, _a) in cl.items.items()}
            patient["gender"] = {"column": item.oid, "map": gmap}
            if review:
                patient["gender"]["review"] = f"sex from ItemDef {item.oid} ({label!r}) via CodeList {cl.oid}"
            continue
        vendor = " ".join(item.extra.get(k, "") for k in ("FieldAnnotation", "FieldNote"))
        aliases = item.aliases + [(next((k for k, v in ONTOLOGIES.items() if v == sys_), ""), c)
                                  for sys_, c in annotation_codes(vendor) if sys_ != codes.UCUM]
        code = [*_alias_codings(aliases, label),
                {"system": f"urn:kaapana-fhir:odm:{study}:item", "code": item.oid, "display": label}]
        obs: dict[str, Any] = {"column": item.oid, "code": code}
        if item.data_type == "boolean":
            obs["value"] = {"type": "boolean", "map": {"1": True, "0": False, "true": True, "false": False}}
        elif cl is not None:
            vmap: dict[str, Any] = {}
            for v, (decode, aliases) in cl.items.items():
                coded = _alias_codings(aliases, decode)
                vmap[v] = coded[0] if coded else {"code": v, "display": decode}
            obs["value"] = {"type": "CodeableConcept", "system": f"urn:kaapana-fhir:odm:{study}:{slug(cl.oid)}",
                            "map": vmap}
        elif item.data_type in ("integer", "float", "double", "decimal"):
            unit = None
            if item.unit:
                unit = md.unit_aliases.get(item.unit) or md.units.get(item.unit, "")
                unit = unit if unit and ucum_problem(unit) is None else guess_ucum(unit or "")
                if unit is None:
                    notes.append(f"ItemDef {item.oid}: unit {md.units.get(item.unit)!r} is not UCUM")
            unit = unit or next((c for s_, c in annotation_codes(vendor) if s_ == codes.UCUM), None) \
                or guess_ucum(item.extra.get("FieldNote", "")) or unit_from_label(label)
            if unit:
                obs["value"] = {"type": "Quantity", "unit": unit}
            else:
                obs["value"] = {"type": "integer" if item.data_type == "integer" else "decimal"}
        elif item.data_type in ("date", "datetime", "partialdate", "partialdatetime"):
            obs["value"] = {"type": "dateTime"}
        elif item.data_type == "boolean":
            obs["value"] = {"type": "boolean"}
        else:
            obs["value"] = {"type": "string"}
        if item.oid in group_date:
            obs["effective"] = {"column": group_date[item.oid]}
        if header is None or item.oid in header:
            observations.append(obs)
    mapping: dict[str, Any] = {
        "version": 1, "name": study, "description": f"derived from the ODM MetaDataVersion of study {md.study_oid!r}",
        "source": {"format": "odm"}, "patient": patient, "instance_columns": list(INSTANCE_COLUMNS),
        "category": "survey", "observations": observations}
    if review:
        mapping["x_notes"] = notes
    return mapping
