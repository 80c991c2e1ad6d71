"""DICOM files / instance-level DICOM JSON → :class:`~kaapana_fhir.core.dicom.mapping.SeriesInput` per study (pure).

Used by the ``--files`` mode (no PACS) and by tests/benchmarks that start from ready-made DICOM JSON.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from kaapana_fhir.core.dicom import values as dv
from kaapana_fhir.core.dicom.mapping import SeriesInput, study_uid_of
from kaapana_fhir.exceptions import MappingError


def dataset_to_json(ds: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A pydicom Dataset → DICOM JSON (PS3.18 F.2) without bulk data, element by element.

    Elements pydicom cannot convert (e.g. DS ``1,5`` under strict validation) are kept as their raw
    string and reported as ``{tag, value, rule}``; the dataset is never rejected as a whole.
    """
    out: dict[str, Any] = {}
    problems: list[dict[str, Any]] = []
    for elem in ds:
        key = f"{elem.tag.group:04X}{elem.tag.element:04X}"
        if elem.tag.group == 0x7FE0 or elem.VR in ("OB", "OW", "OF", "OD", "OL", "OV", "UN"):
            continue
        try:
            out[key] = elem.to_json_dict(bulk_data_element_handler=None, bulk_data_threshold=1 << 20)
        except (ValueError, TypeError, OverflowError) as exc:
            raw = elem.value
            if isinstance(raw, bytes):
                raw = raw.decode("latin-1", "replace")
            parsed = [dv.parse_ds(part) for part in str(raw).split("\\")] if elem.VR == "DS" else []
            if parsed and all(v is not None for v, _ in parsed):
                out[key] = {"vr": "DS", "Value": [v for v, _ in parsed]}
                rule = next((r for _, r in parsed if r), "DS not valid; parsed leniently")
            else:
                out[key] = {"vr": elem.VR, "Value": [str(raw)]}
                rule = f"not convertible to DICOM JSON ({type(exc).__name__}); raw text kept"
            problems.append({"tag": dv.tag_label(key), "value": str(raw)[:64], "rule": rule})
    return out, problems


def group_instances(records: list[tuple[str, dict[str, Any]]]
                    ) -> tuple[OrderedDict[str, list[SeriesInput]], list[dict[str, str]]]:
    """Instance-level DICOM JSON (``(source, json)``) → series per study, plus failures.

    The first instance of a series provides the series attributes; instances are kept for the optional
    instance level. Instances without StudyInstanceUID (0020,000D) become failures naming the tag.
    """
    studies: OrderedDict[str, OrderedDict[str, SeriesInput]] = OrderedDict()
    failures: list[dict[str, str]] = []
    for source, rec in records:
        probe = SeriesInput(rec, source=source)
        try:
            study = study_uid_of(probe)
        except MappingError as exc:
            failures.append({"study": "", "source": source, "error": str(exc)})
            continue
        series_uid = dv.first_str(rec, "0020000E") or f"missing-series:{source}"
        per = studies.setdefault(study, OrderedDict())
        s = per.get(series_uid)
        if s is None:
            per[series_uid] = SeriesInput(rec, [rec], 1, source)
        else:
            s.instances.append(rec)
            s.instance_count = len(s.instances)
    return OrderedDict((k, list(v.values())) for k, v in studies.items()), failures
