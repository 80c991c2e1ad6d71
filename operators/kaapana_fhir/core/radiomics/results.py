"""Parsers of radiomics results computed elsewhere → :class:`~kaapana_fhir.core.radiomics.mapping.SegmentFeatures`.

Formats (detected from the content):

* Kaapana ``PyRadiomicsOperator`` JSON: ``{"<mask name>": {"shape_VoxelVolume": ..., ...}, ...}`` (``original_``
  stripped, values rounded to 4 decimals, a failure written as all zeros → marked ``all_zero_is_failure``);
* pyradiomics' own JSON: one feature dict (``{"original_firstorder_Mean": ..., "diagnostics_...": ...}``) or a
  list of them (batch mode, with ``Image``/``Mask``/``Label`` keys);
* pyradiomics' own CSV: batch mode (one row per case, columns ``Image,Mask,Label,...,original_*``) or the
  two-column single-case form (``name,value``).

* MITK ``CLGlobalImageFeatures`` (Kaapana ``radiomics-dcmseg``): the Phenotyping XML (``-x``), its ``xq`` JSON
  conversion and the ``;``-separated CSV (``-o`` with ``-head``); see "MITK" below for the format facts.

The segment number comes from a ``Label`` column/key, from a dcmqi-style mask name
``<dcm>--<labelID>--<SegmentLabel>`` or, failing both, from the position (an issue is recorded).
Hostile input is bounded (:mod:`kaapana_fhir.core.limits`): a file above :data:`MAX_RESULT_BYTES` or with more than
:data:`MAX_FEATURES` values is refused before it is mapped; JSON nesting, long integers, ``Infinity``/``1e309``
and ``true``/``false`` as feature values or voxel counts are refused naming the file, row and field; XML is parsed
with ``defusedxml`` (no DTD, no entities). ``NaN`` stays allowed (pyradiomics writes it; it becomes
``dataAbsentReason``). A pyradiomics batch CSV/JSON with several cases (the same segment number for different
images or masks) is refused: one result file maps to one segmented image.
No Airflow, no network.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path
from typing import Any

from kaapana_fhir.core import limits
from kaapana_fhir.core.radiomics.mapping import CodedFeature, SegmentFeatures
from kaapana_fhir.exceptions import MappingError

_DCMQI_NAME = re.compile(r"--(\d+)--([^/]*?)(?:\.(?:nii\.gz|nii|nrrd|mha|mhd))?$")


#: largest result file read (bytes); a pyradiomics run with every image type and feature class on 20 segments
#: writes about 1 MB
MAX_RESULT_BYTES = 16 * 1024 * 1024
#: most feature values in one result file (about 1,700 per segment with every image type: 14 such segments);
#: mapping holds one Observation per value in memory (about 25 kB each: 25,000 values ≈ 650 MB peak)
MAX_FEATURES = 25_000


def parse_result_file(path: str | Path) -> tuple[list[SegmentFeatures], list[dict[str, Any]], str]:
    """Parse a result file; returns (segments, issues, detected format)."""
    p = Path(path)
    try:
        text = limits.read_bounded(p, MAX_RESULT_BYTES).decode("utf-8-sig")
    except limits.LimitError as exc:
        raise MappingError(f"{exc} (radiomics result)") from None
    except UnicodeDecodeError as exc:
        raise MappingError(f"{p}: not UTF-8 text at byte {exc.start} (rule: radiomics result file)") from None
    fallback = mask_name_from_result_path(p)
    head = text.lstrip()[:4096]
    if p.suffix.lower() == ".xml" or head.startswith("<"):
        return parse_mitk_xml(text, source=str(p), fallback_name=fallback)
    if p.suffix.lower() == ".csv" or not head.startswith(("{", "[")):
        if looks_like_mitk_csv(head):
            return parse_mitk_csv(text, source=str(p), fallback_name=fallback)
        return parse_csv(text, source=str(p))
    if looks_like_mitk_json(head):
        return parse_mitk_json(text, source=str(p), fallback_name=fallback)
    return parse_json(text, source=str(p))


def _checked(segs: list[SegmentFeatures], source: str, where: list[str] | None = None) -> list[SegmentFeatures]:
    """Refuse values that are not numbers but would pass as one (``true``, ``Infinity``, ``1e309``), too many
    values, and several cases in one file (``where[i]``: the row / list index of ``segs[i]``)."""
    total = sum(len(s.features) + len(s.coded_features) for s in segs)
    if total > MAX_FEATURES:
        raise limits.LimitError(source, f"at most {MAX_FEATURES} feature values per result file",
                                f"has {total} values;")
    for i, seg in enumerate(segs):
        at = where[i] if where else source
        values = [(k, v) for k, v in seg.features.items() if not k.startswith("diagnostics_")]
        values += [(c.key, c.value) for c in seg.coded_features]
        for key, value in values:
            if isinstance(value, bool):
                raise limits.LimitError(f"{at} field {key}", "a feature value is a number (not true/false)",
                                        f"is {str(value).lower()};")
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if isinstance(value, float) and math.isnan(value):
                    continue
                limits.finite_number(value, where=f"{at} field {key}")
            elif isinstance(value, str) and value.strip().lower() not in ("nan", "-nan", ""):
                try:
                    number = float(value)
                except ValueError:
                    continue  # text: the mapping writes dataAbsentReason "error" with an issue
                if not math.isnan(number):
                    limits.finite_number(value, where=f"{at} field {key}")
    return segs


def _voxels(raw: Any, source: str) -> int | None:
    """``diagnostics_Mask-original_VoxelNum``: a non-negative integer, or None when absent."""
    where = f"{source} field diagnostics_Mask-original_VoxelNum"
    value = limits.finite_number(raw, where=where, allow_none=True)
    if value is None:
        return None
    if value < 0 or value != int(value):
        raise limits.LimitError(where, "a voxel count is a non-negative integer", f"is {raw!r};")
    return int(value)


def _one_case(segs: list[SegmentFeatures], cases: list[tuple[str, str]], where: list[str], source: str) -> None:
    """A result file maps to one segmented image: the same segment number twice (pyradiomics batch output with
    several cases, each ``Label=1``) is refused, naming both rows and their Image/Mask."""
    seen: dict[int, int] = {}
    for i, seg in enumerate(segs):
        j = seen.setdefault(seg.segment_number, i)
        if j != i:
            a, b = cases[j], cases[i]
            what = (f"Image/Mask {a[0] or '?'} / {a[1] or '?'} and {b[0] or '?'} / {b[1] or '?'}" if a != b
                    else "the same Image/Mask")
            raise MappingError(f"{source}: {where[j]} and {where[i]} both give segment {seg.segment_number} "
                               f"({what}); {len(segs)} rows look like a pyradiomics batch result of several cases "
                               "(rule: one result file holds the segments of one segmented image; split the batch "
                               "into one file per case and map each with its own --study/--patient-id)")


def _segment_from_name(name: str, position: int, issues: list[dict[str, Any]], source: str) -> tuple[int, str]:
    m = _DCMQI_NAME.search(name)
    if m:
        return int(m.group(1)), m.group(2) or name
    issues.append({"tag": f"{source}: mask {name!r}", "value": str(position),
                   "rule": "mask name has no '--<labelID>--' part; segment number taken from its position"})
    return position, name


def parse_json(text: str, *, source: str = "<json>") -> tuple[list[SegmentFeatures], list[dict[str, Any]], str]:
    # NaN literals are accepted (pyradiomics writes them; they become dataAbsentReason); Infinity, 1e309, long
    # integers and deep nesting are refused
    data = limits.loads_json(text, source=source, max_bytes=MAX_RESULT_BYTES, allow_nan=True)
    issues: list[dict[str, Any]] = []
    if isinstance(data, list):
        where = [f"{source}[{i}]" for i in range(len(data))]
        segs = [_from_flat(d, i + 1, issues, where[i]) for i, d in enumerate(data) if _is_dict(d, source, i)]
        _one_case(segs, [(str(d.get("Image", "")), str(d.get("Mask", ""))) for d in data], where, source)
        return _checked(segs, source, where), issues, "pyradiomics-json"
    if not isinstance(data, dict) or not data:
        raise MappingError(f"{source}: expected a JSON object or list of feature objects (rule: pyradiomics or "
                           "Kaapana PyRadiomicsOperator output)")
    if all(isinstance(v, dict) or v is None for v in data.values()):
        segs = []
        for i, (mask, feats) in enumerate(data.items(), start=1):
            if not feats:
                issues.append({"tag": f"{source}: mask {mask!r}", "value": repr(feats),
                               "rule": "mask has no features; skipped"})
                continue
            num, label = _segment_from_name(mask, i, issues, source)
            segs.append(SegmentFeatures(num, label, dict(feats), all_zero_is_failure=True))
        if not segs:
            raise MappingError(f"{source}: no mask with features (rule: {{mask: {{feature: value}}}})")
        return _checked(segs, source, [f"{source} mask {m!r}" for m, f in data.items() if f]), issues, \
            "kaapana-pyradiomics-json"
    return _checked([_from_flat(data, 1, issues, source)], source), issues, "pyradiomics-json"


def _is_dict(d: Any, source: str, i: int) -> bool:
    if not isinstance(d, dict):
        raise MappingError(f"{source}[{i}]: expected a feature object, got {type(d).__name__}")
    return True


def _from_flat(d: dict[str, Any], position: int, issues: list[dict[str, Any]], source: str) -> SegmentFeatures:
    feats = {k: v for k, v in d.items() if "_" in k and k not in ("Image", "Mask", "Label")}
    label_val = d.get("Label", d.get("diagnostics_Configuration_Label"))
    mask_name = str(d.get("Mask", ""))
    if label_val is not None and label_val != "":
        try:
            num = int(float(label_val))
        except (TypeError, ValueError, OverflowError):
            raise MappingError(f"{source}: Label {label_val!r} is not an integer "
                               "(rule: pyradiomics label value)") from None
        named = _DCMQI_NAME.search(mask_name)
        label = named.group(2) if named else f"label {num}"
    elif mask_name:
        num, label = _segment_from_name(mask_name, position, issues, source)
    else:
        num, label = position, f"segment {position}"
    if not any(not k.startswith("diagnostics_") for k in feats):
        issues.append({"tag": source, "value": mask_name or str(num), "rule": "no feature columns in this case"})
    voxels = _voxels(d.get("diagnostics_Mask-original_VoxelNum"), source)
    err = "empty mask (diagnostics_Mask-original_VoxelNum = 0)" if voxels == 0 else None
    return SegmentFeatures(num, label, feats, error=err, voxel_count=voxels)


def parse_csv(text: str, *, source: str = "<csv>") -> tuple[list[SegmentFeatures], list[dict[str, Any]], str]:
    rows = list(csv.reader(io.StringIO(text)))
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        raise MappingError(f"{source}: empty CSV (rule: pyradiomics CSV output)")
    issues: list[dict[str, Any]] = []
    header = rows[0]
    if len(header) == 2 and not any("_" in h and h.split("_")[0] in ("original", "diagnostics") for h in header):
        flat = {r[0]: r[1] for r in rows if len(r) == 2}
        return _checked([_from_flat(flat, 1, issues, source)], source), issues, "pyradiomics-csv-long"
    if not any(re.match(r"^[A-Za-z0-9.\-]+_[A-Za-z0-9]+(_[A-Za-z0-9]+)?$", h) and not h.startswith("diagnostics_")
               for h in header):
        raise MappingError(f"{source}: row 1 has no feature columns like 'original_firstorder_Mean' "
                           "(rule: pyradiomics CSV output)")
    segs, cases, where = [], [], []
    for i, r in enumerate(rows[1:], start=2):
        if len(r) != len(header):
            raise MappingError(f"{source}: row {i} has {len(r)} cells, header has {len(header)}")
        d = dict(zip(header, r, strict=True))
        where.append(f"{source} row {i}")
        cases.append((d.get("Image", ""), d.get("Mask", "")))
        segs.append(_from_flat(d, i - 1, issues, where[-1]))
    if not segs:
        raise MappingError(f"{source}: header only, no result rows")
    _one_case(segs, cases, where, source)
    return _checked(segs, source, where), issues, "pyradiomics-csv"


# --- MITK CLGlobalImageFeatures (Kaapana "radiomics-dcmseg") -----------------------------------------------------
#
# Format facts (MITK source, Modules/Classification/CLUtilities/src/mitkCLResultXMLWriter.cpp, mitkCLResultWriter.cpp,
# MiniAppUtils/mitkGlobalImageFeaturesParameter.cpp, CLMiniApps/CLGlobalImageFeatures.cpp; Kaapana radiomics.sh):
# * XML root ``mp:measurement`` (xmlns:mp = http://www.mitk.org/Phenotyping; https in later readers) with
#   ``mp:measurementMethod/{mp:name,mp:organisation,mp:version}``, ``mp:image`` / ``mp:mask`` (``mp:filePath``,
#   ``mp:seriesInstanceUID``), ``mp:generationDate`` (YYYYMMDD), ``mp:generationTime`` (HHMMSS), ``mp:pipelineUID``,
#   ``mp:parameters/mp:parameter[@name]`` (CLI arguments), ``mp:features/mp:feature[@name,@version,@class,@setting]``
#   whose text is the value written by a C-locale ostream (so ``nan``, ``-nan``, ``inf`` occur).
# * CSV (output mode 0): ``;`` after every cell, rows end with ``EndOfMeasurement;``; with ``-head`` (or
#   ``-fl-head`` when the file did not exist yet) the first row is
#   ``SoftwareVersion;Patient;Image;Segmentation;SliceNumber;<class>::<name>;...;EndOfMeasurement;`` and each data
#   row is ``<revision>;<image folder>;<image file>;<mask file>;<slice>;<values>;EndOfMeasurement;``. The file is
#   opened for appending, so re-runs add rows (and ``-fl-head`` omits the header of later runs). ``-decimal`` may
#   set ``,`` as decimal point. Feature names may carry an encoded setting: ``<class>::<encoding>::<name>``.
# * Kaapana converts the XML with ``xq`` (xmltodict: ``@attr``, ``#text``), appending (``>>``) to the JSON file.

#: Package CodeSystem of MITK CLGlobalImageFeatures feature names; code = ``<feature class>::<feature name>``.
CS_MITK = "urn:kaapana-fhir:CodeSystem:mitk-global-image-feature"
MITK_NAMESPACES = ("http://www.mitk.org/Phenotyping", "https://www.mitk.org/Phenotyping")
MITK_SOFTWARE = "MITK CLGlobalImageFeatures"

#: MITK features that are the same quantity as a pyradiomics feature (computed from the raw voxel values in the
#: mask, not from a histogram): coded ``CS_PYRADIOMICS`` first, the MITK name as extra coding.
MITK_TO_PYRADIOMICS = {
    ("First Order", "Mean"): "original_firstorder_Mean",
    ("First Order", "Minimum"): "original_firstorder_Minimum",
    ("First Order", "Maximum"): "original_firstorder_Maximum",
    ("First Order", "Range"): "original_firstorder_Range",
}

_FO_INTENSITY = {"Mean", "Median", "Minimum", "Maximum", "Range", "Mean Absolute Deviation", "Robust Mean",
                 "Robust Mean Absolute Deviation", "Median Absolute Deviation", "Root Mean Square", "Mode", "Sum",
                 "Unbiased Standard deviation", "Biased Standard deviation", "Interquartile Range"}
_FO_INTENSITY2 = {"Unbiased Variance", "Biased Variance", "Energy"}
_FO_UNITLESS = {"Skewness", "Kurtosis", "Excess Kurtosis", "Uniformity", "Entropy", "Coefficient Of Variation",
                "Quantile Coefficient Of Dispersion", "Covered Image Intensity Range", "Number Of Voxels",
                "Image Dimension", "Mode Probability"}
_VOL_UNITLESS = re.compile(r"^(Sphericity|Asphericity|Compactness [12]|Spherical disproportion)( \(|$)|"
                           r"^PCA (Elongation|Flatness)")


def mitk_unit_kind(feature_class: str, name: str) -> str | None:
    """:data:`~kaapana_fhir.core.radiomics.mapping.UNITS` kind of a MITK feature, ``None`` when not known."""
    if feature_class == "First Order":
        if name in _FO_INTENSITY or re.fullmatch(r"\d+th Percentile", name):
            return "intensity"
        if name in _FO_INTENSITY2:
            return "intensity2"
        if name in _FO_UNITLESS:
            return "1"
        return "volume" if name == "Voxel Volume" else None
    if feature_class == "Volumetric Features":
        if name.startswith("Volume ("):
            return "volume"
        if name.startswith("Surface to volume ratio"):
            return "per_length"
        if name.startswith("Surface ("):
            return "area"
        if re.match(r"PCA (Major|Minor|Least) axis length", name):
            return "length"
        if _VOL_UNITLESS.search(name) and " old " not in name:
            return "1"
    return None


def mask_name_from_result_path(path: str | Path) -> str:
    """``<seg_name>_radiomics.{xml,csv,json}`` (Kaapana radiomics.sh) → ``<seg_name>``."""
    name = Path(path).name
    return re.sub(r"(_radiomics)?\.(xml|csv|json)$", "", name, flags=re.IGNORECASE)


def looks_like_mitk_csv(head: str) -> bool:
    first = head.splitlines()[0] if head else ""
    return ";" in first and ("EndOfMeasurement" in first or "::" in first)


def looks_like_mitk_json(head: str) -> bool:
    return "measurement" in head and ("Phenotyping" in head or '"mp:' in head)


def _mitk_value(raw: Any) -> Any:
    """C-locale ostream text → float (``nan``/``-nan``/``inf`` included); ``,`` decimal point accepted."""
    if raw is None:
        return None
    text = str(raw).strip()
    try:
        return float(text)
    except ValueError:
        pass
    if re.fullmatch(r"[+-]?\d*,\d+([eE][+-]?\d+)?", text):
        return float(text.replace(",", "."))
    return text  # kept: the mapping writes dataAbsentReason "error" and an issue


def _mitk_segment(feats: list[tuple[str, str, str, Any]], mask_name: str, fallback_name: str | None,
                  meta: dict[str, Any], issues: list[dict[str, Any]], source: str, position: int) -> SegmentFeatures:
    """(class, name, setting, raw value) list → :class:`SegmentFeatures` (MITK names under :data:`CS_MITK`)."""
    name = mask_name or fallback_name or ""
    if _DCMQI_NAME.search(name) is None and fallback_name and _DCMQI_NAME.search(fallback_name):
        name = fallback_name
    num, label = _segment_from_name(name or f"segment {position}", position, issues, source)
    seg = SegmentFeatures(num, label, {}, source=meta)
    seen: set[str] = set()
    for fclass, fname, setting, raw in feats:
        code = f"{fclass}::{fname}"
        key = code if code not in seen else f"{fclass}::{setting}::{fname}"
        if key in seen:
            issues.append({"tag": f"{source}: feature {key!r}", "value": str(raw),
                           "rule": "feature given twice with the same setting; the first value is kept"})
            continue
        seen.add(key)
        value = _mitk_value(raw)
        mitk_coding = {"system": CS_MITK, "code": code, "display": f"{fclass} {fname}"}
        pyr = MITK_TO_PYRADIOMICS.get((fclass, fname))
        if pyr and key == code:
            seg.features[pyr] = value
            seg.extra_codings[pyr] = [mitk_coding]
            continue
        seg.coded_features.append(CodedFeature(key=key, system=CS_MITK, code=code, display=f"{fclass} {fname}",
                                               value=value, unit_kind=mitk_unit_kind(fclass, fname)))
    if not seg.features and not seg.coded_features:
        issues.append({"tag": source, "value": name, "rule": "no features in this MITK result"})
    return seg


def _split_legacy_name(col: str) -> tuple[str, str, str]:
    """CSV header ``<class>::[<encoding>::]<name>`` → (class, name, encoding or "")."""
    parts = col.split("::")
    return parts[0].strip(), parts[-1].strip(), "::".join(parts[1:-1]).strip()


_MITK_CSV_META = {"SoftwareVersion", "Patient", "Image", "Segmentation", "Description", "SliceNumber"}


def parse_mitk_csv(text: str, *, source: str = "<csv>",
                   fallback_name: str | None = None) -> tuple[list[SegmentFeatures], list[dict[str, Any]], str]:
    """MITK CSV (output mode 0, ``;``-separated, header row from ``-head`` / ``-fl-head``) → one segment per row."""
    rows = [r for r in csv.reader(io.StringIO(text), delimiter=";") if any(c.strip() for c in r)]
    if not rows:
        raise MappingError(f"{source}: empty file (rule: MITK CLGlobalImageFeatures CSV output)")
    for r in rows:  # each cell ends with ';' → one empty cell at the end of every row
        while r and not r[-1].strip():
            r.pop()
    header = rows[0]
    if not any("::" in h for h in header):
        raise MappingError(f"{source}: row 1 is not a header with '<class>::<feature>' columns; the CSV was written "
                           "without -head (or appended with -fl-head) and its values cannot be named "
                           "(rule: map the MITK XML (-x) output instead)")
    if header[-1] == "EndOfMeasurement":
        header = header[:-1]
    issues: list[dict[str, Any]] = []
    unknown = [h for h in header if "::" not in h and h not in _MITK_CSV_META]
    if unknown:
        issues.append({"tag": f"{source} row 1", "value": ",".join(unknown),
                       "rule": "unknown MITK CSV columns ignored"})
    by_num: dict[int, SegmentFeatures] = {}
    for i, r in enumerate(rows[1:], start=2):
        if r and r[-1] == "EndOfMeasurement":
            r = r[:-1]
        if any("::" in c for c in r):
            raise MappingError(f"{source}: row {i} is a second header row (rule: MITK CSV has one header row)")
        if len(r) != len(header):
            raise MappingError(f"{source}: row {i} has {len(r)} cells, header has {len(header)} "
                               "(rule: MITK CSV ';'-separated, one value per header column)")
        cells = dict(zip(header, r, strict=True))
        feats = []
        for col, val in cells.items():
            if "::" in col:
                fclass, fname, enc = _split_legacy_name(col)
                feats.append((fclass, fname, enc, val))
        meta = {"software": MITK_SOFTWARE, "version": cells.get("SoftwareVersion") or "unknown",
                "settings": {"source": "mitk-csv"}}
        seg = _mitk_segment(feats, cells.get("Segmentation", ""), fallback_name, meta, issues, f"{source} row {i}",
                            i - 1)
        if seg.segment_number in by_num:
            issues.append({"tag": f"{source} row {i}", "value": str(seg.segment_number),
                           "rule": "segment given again (file appended by a re-run); the last row is used"})
        by_num[seg.segment_number] = seg
    if not by_num:
        raise MappingError(f"{source}: header only, no result rows (rule: MITK CLGlobalImageFeatures CSV output)")
    return _checked(list(by_num.values()), source), issues, "mitk-csv"


def _xml_root(text: str, source: str) -> Any:
    """Parse with defusedxml (no DTD, no entities, no external references), within the size and depth limits."""
    return limits.parse_xml(text, source=source, max_bytes=MAX_RESULT_BYTES)


def parse_mitk_xml(text: str, *, source: str = "<xml>",
                   fallback_name: str | None = None) -> tuple[list[SegmentFeatures], list[dict[str, Any]], str]:
    """MITK Phenotyping XML (``-x``) → one segment (the mask of the run)."""
    root = _xml_root(text, source)
    ns = next((n for n in MITK_NAMESPACES if root.tag == f"{{{n}}}measurement"), None)
    if ns is None:
        raise MappingError(f"{source}: root element {root.tag!r} is not mp:measurement in namespace "
                           f"{MITK_NAMESPACES[0]} (rule: MITK Phenotyping XML)")
    q = {"mp": ns}
    feats_el = root.find("mp:features", q)
    if feats_el is None:
        raise MappingError(f"{source}: no mp:features element (rule: MITK Phenotyping XML)")
    feats = []
    for i, f in enumerate(feats_el.findall("mp:feature", q), start=1):
        if not f.get("name") or not f.get("class"):
            raise MappingError(f"{source}: mp:feature #{i} lacks the 'name' or 'class' attribute")
        feats.append((f.get("class"), f.get("name"), f.get("setting", ""), f.text))
    doc = {"version": root.findtext("mp:measurementMethod/mp:version", "", q),
           "mask": root.findtext("mp:mask/mp:filePath", "", q),
           "params": {p.get("name"): (p.text or "") for p in root.findall("mp:parameters/mp:parameter", q)}}
    return _mitk_result(doc, feats, source, fallback_name, "mitk-xml")


def _mitk_result(doc: dict[str, Any], feats: list[tuple[str, str, str, Any]], source: str,
                 fallback_name: str | None, fmt: str) -> tuple[list[SegmentFeatures], list[dict[str, Any]], str]:
    issues: list[dict[str, Any]] = []
    if not feats:
        raise MappingError(f"{source}: mp:features has no mp:feature (rule: MITK Phenotyping XML)")
    params = {k: v for k, v in doc["params"].items() if k not in ("image", "mask", "output", "xml-output",
                                                                   "morph-mask", "logfile")}
    meta = {"software": MITK_SOFTWARE, "version": (doc["version"] or "unknown").strip(), "settings": params}
    mask = Path(str(doc["mask"]).replace("\\", "/")).name if doc["mask"] else ""
    return _checked([_mitk_segment(feats, mask, fallback_name, meta, issues, source, 1)], source), issues, fmt


def _local(key: str) -> str:
    return key.lstrip("+@#").split(":")[-1]


def _child(d: Any, name: str) -> Any:
    if isinstance(d, dict):
        for k, v in d.items():
            if not k.startswith(("@", "+@", "#")) and _local(k) == name:
                return v
    return None


def _as_list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else [] if v is None else [v]


def _attr(d: dict[str, Any], name: str) -> Any:
    for k in (f"@{name}", f"+@{name}"):
        if k in d:
            return d[k]
    return None


def _text(d: Any) -> Any:
    if isinstance(d, dict):
        return d.get("#text", d.get("+content"))
    return d


def parse_mitk_json(text: str, *, source: str = "<json>",
                    fallback_name: str | None = None) -> tuple[list[SegmentFeatures], list[dict[str, Any]], str]:
    """Kaapana's ``xq`` conversion of the MITK XML (xmltodict: ``@attr``, ``#text``); appended documents → last."""
    if not text.strip():
        raise MappingError(f"{source}: empty file (rule: xq JSON of MITK Phenotyping XML)")
    limits.check_json_depth(text, source)
    dec, docs, pos = limits.json_decoder(source, allow_nan=True), [], 0
    while pos < len(text):
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            break
        try:
            obj, pos = dec.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise MappingError(f"{source}: not valid JSON at line {exc.lineno} column {exc.colno}: "
                               f"{exc.msg}") from None
        except RecursionError:
            raise limits.LimitError(source, "JSON nesting at most 64 levels", "is nested too deep;") from None
        docs.append(obj)
    root = _child(docs[-1], "measurement") if docs else None
    if not isinstance(root, dict):
        raise MappingError(f"{source}: no 'mp:measurement' object (rule: xq JSON of MITK Phenotyping XML)")
    feats = []
    for i, f in enumerate(_as_list(_child(_child(root, "features"), "feature")), start=1):
        if not isinstance(f, dict) or not _attr(f, "name") or not _attr(f, "class"):
            raise MappingError(f"{source}: mp:feature #{i} lacks the '@name' or '@class' attribute")
        feats.append((_attr(f, "class"), _attr(f, "name"), _attr(f, "setting") or "", _text(f)))
    params = {_attr(p, "name"): str(_text(p) or "") for p in _as_list(_child(_child(root, "parameters"), "parameter"))
              if isinstance(p, dict) and _attr(p, "name")}
    version = _text(_child(_child(root, "measurementMethod"), "version"))
    mask = _text(_child(_child(root, "mask"), "filePath"))
    doc = {"version": str(version or ""), "mask": str(mask or ""), "params": params}
    segs, issues, fmt = _mitk_result(doc, feats, source, fallback_name, "mitk-json")
    if len(docs) > 1:
        issues.append({"tag": source, "value": str(len(docs)),
                       "rule": "file holds several appended xq conversions (re-runs); the last one is used"})
    return segs, issues, fmt
