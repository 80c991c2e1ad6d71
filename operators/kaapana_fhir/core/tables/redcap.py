"""REDCap: derive a table mapping from a project's data dictionary (pure).

**Reading the dictionary** (:func:`read_dictionary`) survives real exports: REDCap's "Data Dictionary" CSV
(``Variable / Field Name``, ``Form Name``, ``Field Type``, ``Field Label``, ``Choices, Calculations, OR Slider
Labels``, ``Field Note``, ``Text Validation Type OR Show Slider Number``, ..., ``Field Annotation``) or the API's
metadata export (``field_name``, ``field_type``, ...). Header cells are matched by name ignoring case, spaces and
punctuation; a renamed or garbled cell (e.g. ``1`` instead of ``Variable / Field Name``) falls back to REDCap's
fixed column position. Rows with more cells than the header keep the extra text in the field annotation, short
rows are padded; HTML (``<b>``, ``<div>``, entities) and line breaks in labels are removed; choices may be
separated by ``|`` or line breaks. Every quirk met is listed in :attr:`Dictionary.notes`.

**Codes the dictionary carries** are used:

* choice codes ``1, Male`` → a value map in the project's code system ``urn:kaapana-fhir:redcap:<project>:<field>``;
  choice codes that *are* codes (``snomedct_248152002``, ``loinc_la26406-1``) become SNOMED CT / LOINC codings;
* codes in field names (``snomedct_422549004``, ``loinc_76689_9``) and in field annotations
  (``SNOMED:422549004``, ``LOINC:8302-2``, ``UCUM:kg``) code the Observation (and its unit);
* ontology fields (text fields whose choices are ``BIOPORTAL:SNOMEDCT``, ``BIOPORTAL:ICD10CM``, ...) store codes:
  the cell becomes a coding of that ontology (``unmapped: code``);

**Measurements**: fields of one form whose names share a stem and end in ``_value``/``_result``,
``_unit``, ``_date`` and ``_test``/``_assay``/``_name`` (or carry the annotation ``@FHIR-MEASUREMENT=<group>:
<role>``) become **one** Observation per repeat: code from the test field, ``valueQuantity`` with the unit
field's UCUM code, ``effectiveDateTime`` from the date field. A form with exactly one other date field (e.g.
``visit_date``) uses it as the date of its other Observations.

**Patient**: the first field is the record id (identifier system ``urn:kaapana-fhir:redcap:<project>:record-id``,
one per project); the date-of-birth and sex fields (by name, label in English/German or code) become
``Patient.birthDate`` and ``Patient.gender``; a vital-status field with alive/dead choices becomes
``Patient.deceasedBoolean``. Fields flagged ``Identifier? = y`` (names, addresses) are never written.

Repeating instruments/events: ``redcap_event_name``, ``redcap_repeat_instrument`` and
``redcap_repeat_instance`` (those present in the export header) are instance columns.

The derived mapping is plain data (YAML via ``kaapana-fhir mapping init --redcap DICT``); with ``review=True``
each guess (gender map, measurement group, unit) carries a ``review`` marker the import insists on removing.
"""

from __future__ import annotations

import csv
import html
import io
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kaapana_fhir.core import codes
from kaapana_fhir.core.tables.mapping import slug
from kaapana_fhir.core.tables.units import guess_ucum, ucum_problem, unit_from_label
from kaapana_fhir.exceptions import ConfigError

CS_REDCAP_FIELD = "urn:kaapana-fhir:CodeSystem:redcap-field"
INSTANCE_COLUMNS = ("redcap_event_name", "redcap_repeat_instrument", "redcap_repeat_instance")
#: REDCap's fixed dictionary column order (used when a header cell is renamed or garbled)
COLUMNS = ("field_name", "form_name", "section_header", "field_type", "field_label", "choices", "field_note",
           "validation", "validation_min", "validation_max", "identifier", "branching_logic", "required",
           "custom_alignment", "question_number", "matrix_group", "matrix_ranking", "field_annotation")
_ALIASES = {
    "variablefieldname": "field_name", "fieldname": "field_name", "variable": "field_name",
    "variablename": "field_name",
    "formname": "form_name", "instrument": "form_name", "sectionheader": "section_header",
    "fieldtype": "field_type", "fieldlabel": "field_label", "choicescalculationsorsliderlabels": "choices",
    "selectchoicesorcalculations": "choices", "choices": "choices", "fieldnote": "field_note",
    "textvalidationtypeorshowslidernumber": "validation", "textvalidationtype": "validation",
    "textvalidationmin": "validation_min", "textvalidationmax": "validation_max", "identifier": "identifier",
    "branchinglogicshowfieldonlyif": "branching_logic", "branchinglogic": "branching_logic",
    "requiredfield": "required", "customalignment": "custom_alignment", "questionnumbersurveysonly": "question_number",
    "matrixgroupname": "matrix_group", "matrixrankingsurveysonly": "matrix_ranking", "matrixranking": "matrix_ranking",
    "fieldannotation": "field_annotation",
}
ONTOLOGIES = {
    "SNOMEDCT": codes.SNOMED, "SNOMED": codes.SNOMED, "SCT": codes.SNOMED, "LOINC": codes.LOINC, "LN": codes.LOINC,
    "ICD10CM": "http://hl7.org/fhir/sid/icd-10-cm", "ICD10": "http://hl7.org/fhir/sid/icd-10",
    "ICD10GM": "http://fhir.de/CodeSystem/bfarm/icd-10-gm", "ICD-10-GM": "http://fhir.de/CodeSystem/bfarm/icd-10-gm",
    "ICD11": "http://id.who.int/icd/release/11/mms", "ICDO3": "http://terminology.hl7.org/CodeSystem/icd-o-3",
    "HP": "http://human-phenotype-ontology.org", "HPO": "http://human-phenotype-ontology.org",
    "MONDO": "http://purl.obolibrary.org/obo/mondo.owl", "ORDO": "http://www.orpha.net", "ORPHA": "http://www.orpha.net",
    "OMIM": "http://www.omim.org", "NCIT": "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl",
    "RXNORM": "http://www.nlm.nih.gov/research/umls/rxnorm", "ATC": "http://www.whocc.no/atc",
}
_TAG_RE = re.compile(r"<[^>]*>")
_SPACE_RE = re.compile(r"\s+")
_ANNOT_CODE_RE = re.compile(r"(?<![A-Za-z])(SNOMED ?CT|SNOMED|SCT|LOINC|LN|ICD-?10-?GM|ICD-?10-?CM|ICD-?10|NCIT|HPO?|"
                            r"MONDO|ORPHA|UCUM)\s*[:=]\s*([A-Za-z0-9][A-Za-z0-9.\-_\[\]/{}*%']*)")
_MEASURE_TAG_RE = re.compile(r"@FHIR-MEASUREMENT\s*=\s*([A-Za-z0-9_]+)\s*:\s*(value|unit|date|test)", re.I)
_NAME_CODE_RE: list[tuple[re.Pattern[str], str, Callable[[re.Match[str]], str]]] = [
    (re.compile(r"^(?:snomedct|snomed|sct)_(\d{6,18})(?:_|$)", re.I), codes.SNOMED, lambda m: m.group(1)),
    (re.compile(r"^loinc_(\d{1,7})_(\d)(?:_|$)", re.I), codes.LOINC, lambda m: f"{m.group(1)}-{m.group(2)}"),
    (re.compile(r"^loinc_(la\d{3,7})[-_](\d)$", re.I), codes.LOINC, lambda m: f"{m.group(1).upper()}-{m.group(2)}"),
]
_ROLE_SUFFIXES = {
    "value": ("value", "val", "result", "res", "wert", "ergebnis"),
    "unit": ("unit", "units", "einheit", "uom"),
    "date": ("date", "dt", "datum", "time"),
    "test": ("test", "assay", "name", "code", "type", "param", "parameter", "analyte"),
}
_BIRTH_NAMES = ("dob", "birth_date", "date_of_birth", "birthdate", "birthday", "geburtsdatum", "gebdat")
_BIRTH_LABEL = re.compile(r"\b(date of birth|birth ?date|geburtsdatum|dob)\b", re.I)
_BIRTH_CODES = {(codes.SNOMED, "184099003"), (codes.LOINC, "21112-8")}
_SEX_NAMES = ("sex", "gender", "geschlecht", "sex_at_birth", "biological_sex")
_SEX_LABEL = re.compile(r"^\W*(\d+(\.\d+)*\s*)?(sex|gender|geschlecht|sex at birth|administrative gender)\b", re.I)
_SEX_CODES = {(codes.LOINC, "76689-9"), (codes.LOINC, "46098-0"), (codes.SNOMED, "263495000"),
              (codes.SNOMED, "734000001")}
_VITAL_LABEL = re.compile(r"\b(vital status|vitalstatus|lebensstatus|alive or dead)\b", re.I)
_GENDERS = {"male": "male", "m": "male", "man": "male", "männlich": "male", "maennlich": "male", "mann": "male",
            "female": "female", "f": "female", "w": "female", "woman": "female", "weiblich": "female", "frau": "female",
            "other": "other", "diverse": "other", "divers": "other", "intersex": "other", "d": "other",
            "unknown": "unknown", "unbekannt": "unknown", "not known": "unknown", "patient sex unknown": "unknown",
            "undetermined": "unknown", "unbestimmt": "unknown"}
_GENDER_CODES = {"248153007": "male", "248152002": "female", "184115007": "unknown", "32570681000036106": "other"}
_VITAL = {"alive": False, "lebend": False, "living": False, "dead": True, "deceased": True, "verstorben": True,
          "tot": True}


@dataclass
class Field:
    """One dictionary row with normalised keys; ``row`` is its 1-based line in the dictionary (header = 1)."""

    row: int
    values: dict[str, str]

    def get(self, key: str) -> str:
        return self.values.get(key, "")

    @property
    def name(self) -> str:
        return self.get("field_name")

    @property
    def type(self) -> str:
        return self.get("field_type").lower()

    @property
    def validation(self) -> str:
        return self.get("validation").lower()


@dataclass
class Dictionary:
    fields: list[Field]
    notes: list[str] = field(default_factory=list)


def clean(text: str) -> str:
    """Label text without HTML tags/entities and line breaks (whitespace collapsed)."""
    return _SPACE_RE.sub(" ", html.unescape(_TAG_RE.sub(" ", text or ""))).strip()


def _norm_header(cell: str) -> str:
    return re.sub(r"[^a-z0-9]", "", clean(cell).lower())


def read_dictionary(text: str, *, name: str = "dictionary") -> Dictionary:
    """Parse a REDCap data dictionary (CSV text, or the API's JSON metadata export) tolerantly; raises
    :class:`ConfigError` only if unusable."""
    text = text.lstrip("\ufeff")
    if text.lstrip().startswith("["):
        from kaapana_fhir.core.limits import LimitError, loads_json

        try:
            records = loads_json(text, source=f"REDCap dictionary {name}")
        except LimitError as exc:
            raise ConfigError(str(exc)) from None
        if not isinstance(records, list) or not records or not all(isinstance(r, dict) for r in records):
            raise ConfigError(f"REDCap dictionary {name}: JSON must be a list of field objects (rule: REDCap API "
                              "metadata export)")
        names = list(dict.fromkeys(k for r in records for k in r))
        rows = [names] + [[str(r.get(k, "") if r.get(k) is not None else "") for k in names] for r in records]
    else:
        rows = list(csv.reader(io.StringIO(text)))
    while rows and not any(c.strip() for c in rows[0]):
        rows.pop(0)
    if not rows:
        raise ConfigError(f"REDCap dictionary {name}: empty file (rule: REDCap data dictionary CSV)")
    header = rows[0]
    notes: list[str] = []
    keys: list[str] = []
    for i, cell in enumerate(header):
        key = _ALIASES.get(_norm_header(cell))
        if key is None and len(header) >= 10 and i < len(COLUMNS):
            key = COLUMNS[i]
            notes.append(f"{name}: row 1, column {i + 1}: header {cell[:40]!r} not recognised; "
                         f"read as {key!r} by REDCap's column order")
        keys.append(key or f"extra_{i}")
    if "field_name" not in keys or "field_type" not in keys:
        raise ConfigError(f"REDCap dictionary {name}: row 1: needs columns 'Variable / Field Name' and 'Field Type' "
                          f"(found {[clean(h)[:30] for h in header[:8]]}) (rule: REDCap data dictionary CSV)")
    fields = []
    for n, rec in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in rec):
            continue
        extra = [c.strip() for c in rec[len(keys):] if c.strip()]
        if extra:
            notes.append(f"{name}: row {n}: {len(rec)} cells for {len(keys)} header columns; "
                         "extra text kept in the field annotation")
        vals = {k: (rec[i] if i < len(rec) else "") for i, k in enumerate(keys)}
        if extra:
            vals["field_annotation"] = " ".join([vals.get("field_annotation", ""), *extra]).strip()
        vals = {k: v.strip() for k, v in vals.items()}
        if not vals.get("field_name"):
            notes.append(f"{name}: row {n}: no field name; row skipped")
            continue
        vals["field_name"] = clean(vals["field_name"]).lower()
        fields.append(Field(n, vals))
    if not fields:
        raise ConfigError(f"REDCap dictionary {name}: no fields (rule: REDCap data dictionary CSV)")
    return Dictionary(fields, notes)


def parse_dictionary(text: str, *, name: str = "dictionary") -> list[dict[str, str]]:
    """Rows of a REDCap data dictionary with normalised keys (``field_name``, ``field_type``, ...)."""
    return [f.values for f in read_dictionary(text, name=name).fields]


def parse_choices(text: str, *, field: str = "") -> list[tuple[str, str]]:
    """``"1, Male | 2, Female"`` (``|`` or line breaks between choices) → ``[("1", "Male"), ("2", "Female")]``."""
    out = []
    parts = re.split(r"\s*\|\s*|\s*\\n\s*|\r?\n", text or "")
    for part in parts:
        if not part.strip():
            continue
        code, sep, label = part.partition(",")
        if not sep:
            raise ConfigError(f"REDCap field {field!r}: choice {part.strip()!r} is not 'code, label' "
                              "(rule: choices 'code, label | code, label')")
        out.append((code.strip(), clean(label)))
    return out


def code_of_token(token: str) -> tuple[str, str] | None:
    """``snomedct_248152002`` → (SNOMED, ``248152002``); ``loinc_76689_9`` → (LOINC, ``76689-9``); else None."""
    for rx, system, fmt in _NAME_CODE_RE:
        m = rx.match(token.strip())
        if m:
            return system, fmt(m)
    return None


def annotation_codes(text: str) -> list[tuple[str, str]]:
    """``(system, code)`` pairs named in a field annotation/note (``SNOMED:123``, ``LOINC:8302-2``, ``UCUM:kg``)."""
    out = []
    for sysname, code in _ANNOT_CODE_RE.findall(text or ""):
        key = sysname.upper().replace(" ", "").replace("-", "")
        system = codes.UCUM if key == "UCUM" else ONTOLOGIES.get(key, ONTOLOGIES.get(key.replace("CT", "CT")))
        if system:
            out.append((system, code.rstrip(".")))
    return out


def project_name_of(filename: str) -> str:
    """A REDCap project name from an export file name (``LungStudy_DataDictionary_2024-01-05.csv`` → LungStudy)."""
    base = re.sub(r"\.[A-Za-z0-9]+$", "", filename.rsplit("/", 1)[-1])
    base = re.split(r"_(?:DataDictionary|DATA|DATA_LABELS|Dictionary)(?:_|$)", base, flags=re.I)[0]
    return re.sub(r"_\d{4}-\d{2}-\d{2}.*$", "", base) or "redcap"


def _role(fname: str, annotation: str) -> tuple[str, str] | None:
    m = _MEASURE_TAG_RE.search(annotation or "")
    if m:
        return m.group(1).lower(), m.group(2).lower()
    for role, suffixes in _ROLE_SUFFIXES.items():
        for suf in suffixes:
            if fname.endswith("_" + suf) and len(fname) > len(suf) + 1:
                return fname[: -len(suf) - 1], role
    return None


class _Deriver:
    def __init__(self, dd: Dictionary, *, present: set[str] | None, project: str, review: bool) -> None:
        self.dd, self.present, self.review = dd, present, review
        self.project = slug(project)
        self.observations: list[dict[str, Any]] = []
        self.notes = list(dd.notes)

    def field_system(self, fname: str) -> str:
        return f"urn:kaapana-fhir:redcap:{self.project}:{fname}"

    def has(self, column: str) -> bool:
        return self.present is None or column.lower() in self.present

    def var_codes(self, f: Field, label: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        named = code_of_token(f.name)
        pairs = ([named] if named else []) + [p for p in annotation_codes(f.get("field_annotation"))
                                              if p[0] != codes.UCUM]
        for system, code in pairs:
            c = {"system": system, "code": code, "display": label or f.name}
            if c not in out:
                out.append(c)
        out.append({"system": CS_REDCAP_FIELD, "code": f.name, "display": label or f.name})
        return out

    def choice_map(self, f: Field) -> dict[str, Any]:
        m: dict[str, Any] = {}
        for c, lbl in parse_choices(f.get("choices"), field=f.name):
            coded = code_of_token(c)
            m[c] = {"system": coded[0], "code": coded[1], "display": lbl} if coded else {"code": c, "display": lbl}
        return m

    def unit_of(self, f: Field, label: str) -> str | None:
        for system, code in annotation_codes(f.get("field_annotation") + " " + f.get("field_note")):
            if system == codes.UCUM and ucum_problem(code) is None:
                return code
        note = clean(f.get("field_note"))
        return (guess_ucum(note) if note and len(note) <= 20 else None) or unit_from_label(label)

    def add(self, column: str, code: Any, value: dict[str, Any], *, effective: str | None = None,
            review: str | None = None, **extra: Any) -> None:
        if not self.has(column):
            return
        o: dict[str, Any] = {"column": column, "code": code, "value": value, **extra}
        if effective:
            o["effective"] = {"column": effective}
        if review and self.review:
            o["review"] = review
        self.observations.append(o)


def derive_mapping(dictionary_text: str, *, header: list[str] | None = None, name: str = "redcap",
                   project: str | None = None, identifier_system: str | None = None,
                   review: bool = False) -> dict[str, Any]:
    """A version-1 mapping (a dict, as YAML would give) for a REDCap project's records export.

    ``project`` names the identifier and code systems (default: ``name``); ``review`` marks guesses for review
    (used by ``mapping init --redcap``). Notes about dictionary quirks are in ``mapping["x_notes"]`` only when
    ``review`` is on (as YAML comments by the CLI), never in the schema-validated keys.
    """
    dd = read_dictionary(dictionary_text, name=name)
    present = {h.lower() for h in header} if header is not None else None
    proj = project or name
    d = _Deriver(dd, present=present, project=proj, review=review)
    key = dd.fields[0].name
    system = identifier_system or f"urn:kaapana-fhir:redcap:{slug(proj)}:record-id"
    patient: dict[str, Any] = {"key": key, "identifier_system": system}
    date_order = "dmy"
    handled: set[str] = {key}

    # ---- demographics
    for f in dd.fields[1:]:
        label = clean(f.get("field_label"))
        vcodes = {(c["system"], c["code"]) for c in d.var_codes(f, label)}
        is_date = f.type == "text" and f.validation.startswith("date")
        if is_date and "birth_date" not in patient and (
                f.name in _BIRTH_NAMES or _BIRTH_LABEL.search(label) or vcodes & _BIRTH_CODES):
            patient["birth_date"] = {"column": f.name}
            handled.add(f.name)
        elif f.type in ("radio", "dropdown") and "gender" not in patient and (
                f.name in _SEX_NAMES or _SEX_LABEL.search(label) or vcodes & _SEX_CODES):
            gmap: dict[str, Any] = {}
            unsure = []
            for c, lbl in parse_choices(f.get("choices"), field=f.name):
                coded = code_of_token(c)
                g = _GENDER_CODES.get(coded[1]) if coded else None
                g = g or _GENDERS.get(lbl.strip().lower())
                if g is None:
                    unsure.append(lbl)
                gmap[c] = g or "unknown"
            patient["gender"] = {"column": f.name, "map": gmap}
            if review and (unsure or f.name not in _SEX_NAMES):
                patient["gender"]["review"] = (f"derived from field {f.name!r} ({label!r})"
                                               + (f"; choices {unsure} set to 'unknown'" if unsure else ""))
            handled.add(f.name)
        elif f.type in ("radio", "dropdown") and "deceased" not in patient and _VITAL_LABEL.search(label):
            vmap: dict[str, Any] = {}
            for c, lbl in parse_choices(f.get("choices"), field=f.name):
                vmap[c] = _VITAL.get(lbl.strip().lower())
            if any(v is True for v in vmap.values()):
                patient["deceased"] = {"column": f.name, "map": vmap}
                if review:
                    patient["deceased"]["review"] = f"vital status from field {f.name!r} ({label!r})"
                handled.add(f.name)

    # ---- measurement groups (per form)
    groups: dict[tuple[str, str], dict[str, Field]] = {}
    for f in dd.fields[1:]:
        if f.name in handled:
            continue
        r = _role(f.name, f.get("field_annotation"))
        if r:
            groups.setdefault((f.get("form_name"), r[0]), {}).setdefault(r[1], f)
    for (_form, stem), roles in groups.items():
        vf = roles.get("value")
        if vf is None or len(roles) < 2 or vf.type not in ("text", "calc"):
            continue
        d.notes.append(f"measurement {stem!r}: " + ", ".join(f"{r}={g.name}" for r, g in roles.items()))
        handled.update(g.name for g in roles.values())
        label = clean(vf.get("field_label"))
        value: dict[str, Any] = {"type": "Quantity"}
        uf = roles.get("unit")
        fixed_unit = d.unit_of(vf, label)
        if uf is not None:
            value["unit_column"] = uf.name
            if uf.type in ("radio", "dropdown"):
                umap = {}
                for c, lbl in parse_choices(uf.get("choices"), field=uf.name):
                    guess = guess_ucum(lbl) or guess_ucum(c)
                    umap[c] = guess or "TODO"
                value["unit_map"] = umap
            if fixed_unit:
                value["unit"] = fixed_unit
        elif fixed_unit:
            value["unit"] = fixed_unit
        else:
            value = {"type": "decimal"}
        if vf.validation == "integer" and value["type"] == "decimal":
            value = {"type": "integer"}
        extra: dict[str, Any] = {}
        tf = roles.get("test")
        if tf is not None:
            if tf.type in ("radio", "dropdown"):
                extra["code_from"] = {"column": tf.name, "system": d.field_system(tf.name), "map": d.choice_map(tf)}
            else:
                onto = _ontology(tf)
                extra["code_from"] = ({"column": tf.name, "system": onto, "unmapped": "code"} if onto
                                      else {"column": tf.name, "unmapped": "text"})
            if not d.has(tf.name):
                continue
        df = roles.get("date")
        if df is not None and not d.has(df.name):
            df = None
        d.add(vf.name, d.var_codes(vf, label), value, effective=df.name if df else None,
              review=f"measurement group {stem!r} from field names ({', '.join(roles)})", **extra)

    # ---- per-form date (one other date field in a form → effective of its Observations)
    form_dates: dict[str, list[Field]] = {}
    for f in dd.fields[1:]:
        if f.name not in handled and f.type == "text" and f.validation.startswith("date"):
            form_dates.setdefault(f.get("form_name"), []).append(f)
    effective_of = {form: fs[0].name for form, fs in form_dates.items()
                    if len(fs) == 1 and re.search(r"date|datum", fs[0].name)}

    # ---- all other fields
    for f in dd.fields[1:]:
        fname, ftype, val = f.name, f.type, f.validation
        if fname in handled or ftype in ("descriptive", "file", "signature", "sql"):
            continue
        label = clean(f.get("field_label"))
        if f.get("identifier").lower() in ("y", "yes", "1"):
            d.notes.append(f"field {fname!r} is flagged as an identifier; not written")
            continue
        eff = effective_of.get(f.get("form_name"))
        if eff == fname:
            eff = None  # the form's date is a value of its own, and the date of the form's other fields
        code = d.var_codes(f, label)
        if ftype in ("radio", "dropdown"):
            d.add(fname, code, {"type": "CodeableConcept", "system": d.field_system(fname), "map": d.choice_map(f)},
                  effective=eff)
        elif ftype in ("yesno", "truefalse"):
            d.add(fname, code, {"type": "boolean", "map": {"1": True, "0": False}}, effective=eff)
        elif ftype == "checkbox":
            for c, lbl in parse_choices(f.get("choices"), field=fname):
                col = f"{fname}___{c.lower().replace('-', '_')}"
                coded = code_of_token(c)
                ccode = [{"system": coded[0], "code": coded[1], "display": lbl}] if coded else []
                ccode.append({"system": CS_REDCAP_FIELD, "code": col, "display": f"{label}: {lbl}"})
                d.add(col, ccode, {"type": "boolean", "map": {"1": True, "0": False}}, effective=eff)
        elif ftype in ("calc", "slider") or (ftype in ("text", "notes") and (
                val == "integer" or val.startswith("number"))):
            unit = d.unit_of(f, label)
            kind = "integer" if (ftype == "slider" or val == "integer") else "decimal"
            value = {"type": "Quantity", "unit": unit} if unit else {"type": kind}
            d.add(fname, code, value, effective=eff,
                  review=None if unit or ftype == "slider" else "no unit found; set value: {type: Quantity, unit: ...}"
                  if kind == "decimal" else None)
        elif ftype in ("text", "notes"):
            if val.startswith(("date", "datetime")):
                if val.endswith("_mdy"):
                    date_order = "mdy"
                d.add(fname, code, {"type": "dateTime"})
                continue
            onto = _ontology(f)
            if onto:
                d.add(fname, code, {"type": "CodeableConcept", "system": onto, "unmapped": "code"}, effective=eff)
            else:
                d.add(fname, code, {"type": "string"}, effective=eff)
    mapping: dict[str, Any] = {
        "version": 1, "name": name,
        "description": f"derived from the data dictionary of REDCap project {proj!r}",
        "source": {"format": "auto", "date_order": date_order}, "patient": patient,
        "category": "survey", "observations": d.observations}
    inst = [c for c in INSTANCE_COLUMNS if present is None or c in present]
    if inst and present is not None:
        mapping["instance_columns"] = inst
    if review:
        mapping["x_notes"] = d.notes
    return mapping


def _ontology(f: Field) -> str | None:
    m = re.match(r"^\s*BIOPORTAL\s*:\s*([A-Za-z0-9_-]+)", f.get("choices"))
    if not m:
        return None
    key = m.group(1).upper().replace("-", "").replace("_", "")
    return ONTOLOGIES.get(key, f"urn:kaapana-fhir:ontology:{key.lower()}")
