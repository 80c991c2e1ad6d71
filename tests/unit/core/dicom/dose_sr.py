"""Build a CT Radiation Dose SR (TID 10011) with highdicom for tests."""
from __future__ import annotations

from typing import Any

import highdicom as hd
from pydicom.uid import generate_uid

XRAY_DOSE_SR = "1.2.840.10008.5.1.4.1.1.88.67"


def _dcm(code: str, meaning: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(code, "DCM", meaning)


def _num(code: str, meaning: str, value: float, unit: str) -> hd.sr.NumContentItem:
    return hd.sr.NumContentItem(name=_dcm(code, meaning), value=value,
                                unit=hd.sr.CodedConcept(unit, "UCUM", unit),
                                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)


def dose_sr(evidence: list[Any], events: list[dict[str, Any]], *, dlp_total: float | None,
            series_uid: str | None = None, series_number: int = 900) -> Any:
    """``events``: dicts with ``uid``, ``ctdivol`` (or None), ``dlp``, ``protocol``."""
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    items = []
    acc = hd.sr.ContainerContentItem(name=_dcm("113811", "CT Accumulated Dose Data"), relationship_type=contains)
    if dlp_total is not None:
        acc.ContentSequence = hd.sr.ContentSequence([_num("113813", "CT Dose Length Product Total", dlp_total,
                                                          "mGy.cm")])
    items.append(acc)
    for ev in events:
        acq = hd.sr.ContainerContentItem(name=_dcm("113819", "CT Acquisition"), relationship_type=contains)
        dose_items = []
        if ev.get("ctdivol") is not None:
            dose_items.append(_num("113830", "Mean CTDIvol", ev["ctdivol"], "mGy"))
        if ev.get("dlp") is not None:
            dose_items.append(_num("113838", "DLP", ev["dlp"], "mGy.cm"))
        dose = hd.sr.ContainerContentItem(name=_dcm("113829", "CT Dose"), relationship_type=contains)
        if dose_items:
            dose.ContentSequence = hd.sr.ContentSequence(dose_items)
        acq.ContentSequence = hd.sr.ContentSequence([
            hd.sr.TextContentItem(name=_dcm("125203", "Acquisition Protocol"), value=ev.get("protocol", "Thorax"),
                                  relationship_type=contains),
            hd.sr.UIDRefContentItem(name=_dcm("113769", "Irradiation Event UID"), value=ev["uid"],
                                    relationship_type=contains),
            dose])
        items.append(acq)
    root = hd.sr.ContainerContentItem(name=_dcm("113701", "X-Ray Radiation Dose Report"), template_id="10011")
    root.ContentSequence = hd.sr.ContentSequence(items)
    sr = hd.sr.ComprehensiveSR(evidence=evidence, content=root, series_instance_uid=series_uid or generate_uid(),
                               series_number=series_number, sop_instance_uid=generate_uid(), instance_number=1,
                               manufacturer="KaapanaTest", record_evidence=False)
    sr.SOPClassUID = XRAY_DOSE_SR
    sr.file_meta.MediaStorageSOPClassUID = XRAY_DOSE_SR
    sr.SeriesDescription = "Dose Report"
    return sr
