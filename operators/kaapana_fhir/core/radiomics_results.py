"""Parsers of radiomics results computed elsewhere → :class:`~kaapana_fhir.core.radiomics_map.SegmentFeatures`.

Formats (detected from the content):

* Kaapana ``PyRadiomicsOperator`` JSON: ``{"<mask name>": {"shape_VoxelVolume": ..., ...}, ...}`` (``original_``
  stripped, values rounded to 4 decimals, a failure written as all zeros → marked ``all_zero_is_failure``);
* pyradiomics' own JSON: one feature dict (``{"original_firstorder_Mean": ..., "diagnostics_...": ...}``) or a
  list of them (batch mode, with ``Image``/``Mask``/``Label`` keys);
* pyradiomics' own CSV: batch mode (one row per case, columns ``Image,Mask,Label,...,original_*``) or the
  two-column single-case form (``name,value``).

The segment number comes from a ``Label`` column/key, from a dcmqi-style mask name
``<dcm>--<labelID>--<SegmentLabel>`` or, failing both, from the position (an issue is recorded).
No Airflow, no network.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

from kaapana_fhir.core.radiomics_map import SegmentFeatures
from kaapana_fhir.exceptions import MappingError

_DCMQI_NAME = re.compile(r"--(\d+)--([^/]*?)(?:\.(?:nii\.gz|nii|nrrd|mha|mhd))?$")


def parse_result_file(path: str | Path) -> tuple[list[SegmentFeatures], list[dict[str, Any]], str]:
    """Parse a result file; returns (segments, issues, detected format)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MappingError(f"{p}: cannot read radiomics result ({exc})") from None
    if p.suffix.lower() == ".csv":
        return parse_csv(text, source=str(p))
    if p.suffix.lower() == ".json":
        return parse_json(text, source=str(p))
    if text.lstrip().startswith(("{", "[")):
        return parse_json(text, source=str(p))
    return parse_csv(text, source=str(p))


def _segment_from_name(name: str, position: int, issues: list[dict[str, Any]], source: str) -> tuple[int, str]:
    m = _DCMQI_NAME.search(name)
    if m:
        return int(m.group(1)), m.group(2) or name
    issues.append({"tag": f"{source}: mask {name!r}", "value": str(position),
                   "rule": "mask name has no '--<labelID>--' part; segment number taken from its position"})
    return position, name


def parse_json(text: str, *, source: str = "<json>") -> tuple[list[SegmentFeatures], list[dict[str, Any]], str]:
    try:
        # NaN / Infinity literals are accepted (pyradiomics writes them); they become dataAbsentReason
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MappingError(f"{source}: not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    issues: list[dict[str, Any]] = []
    if isinstance(data, list):
        segs = [_from_flat(d, i + 1, issues, f"{source}[{i}]") for i, d in enumerate(data) if _is_dict(d, source, i)]
        return segs, issues, "pyradiomics-json"
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
        return segs, issues, "kaapana-pyradiomics-json"
    return [_from_flat(data, 1, issues, source)], issues, "pyradiomics-json"


def _is_dict(d: Any, source: str, i: int) -> bool:
    if not isinstance(d, dict):
        raise MappingError(f"{source}[{i}]: expected a feature object, got {type(d).__name__}")
    return True


def _from_flat(d: dict[str, Any], position: int, issues: list[dict[str, Any]], source: str) -> SegmentFeatures:
    feats = {k: v for k, v in d.items() if "_" in k and k not in ("Image", "Mask", "Label")}
    label_val = d.get("Label", d.get("diagnostics_Configuration_Label"))
    mask_name = str(d.get("Mask", ""))
    if label_val not in (None, ""):
        try:
            num = int(float(label_val))
        except (TypeError, ValueError):
            raise MappingError(f"{source}: Label {label_val!r} is not an integer (rule: pyradiomics label value)") from None
        label = _DCMQI_NAME.search(mask_name).group(2) if _DCMQI_NAME.search(mask_name) else f"label {num}"
    elif mask_name:
        num, label = _segment_from_name(mask_name, position, issues, source)
    else:
        num, label = position, f"segment {position}"
    if not any(not k.startswith("diagnostics_") for k in feats):
        issues.append({"tag": source, "value": mask_name or str(num), "rule": "no feature columns in this case"})
    vox = d.get("diagnostics_Mask-original_VoxelNum")
    try:
        voxels = int(float(vox)) if vox not in (None, "") else None
    except (TypeError, ValueError):
        voxels = None
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
        return [_from_flat(flat, 1, issues, source)], issues, "pyradiomics-csv-long"
    if not any(re.match(r"^[A-Za-z0-9.\-]+_[A-Za-z0-9]+(_[A-Za-z0-9]+)?$", h) and not h.startswith("diagnostics_")
               for h in header):
        raise MappingError(f"{source}: row 1 has no feature columns like 'original_firstorder_Mean' "
                           "(rule: pyradiomics CSV output)")
    segs = []
    for i, r in enumerate(rows[1:], start=2):
        if len(r) != len(header):
            raise MappingError(f"{source}: row {i} has {len(r)} cells, header has {len(header)}")
        segs.append(_from_flat(dict(zip(header, r)), i - 1, issues, f"{source} row {i}"))
    if not segs:
        raise MappingError(f"{source}: header only, no result rows")
    return segs, issues, "pyradiomics-csv"
