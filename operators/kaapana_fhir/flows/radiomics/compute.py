"""DICOM CT/MR series + DICOM SEG → SimpleITK image and per-segment masks with the right geometry.

* Slices are ordered by ImagePositionPatient (0020,0032) projected on the slice normal (row × column of
  ImageOrientationPatient (0020,0037)), never by file or InstanceNumber order; a normal pointing to −z is
  kept as the third direction column, so physical positions are exact.
* Spacing: PixelSpacing (0028,0030) = [row spacing (y), column spacing (x)]; z = distance between sorted
  slice positions (must be uniform within 1 %).
* Pixels: stored values × RescaleSlope (0028,1053) + RescaleIntercept (0028,1052).
* SEG (Modality (0008,0060) ``SEG``, BINARY (0062,0001)) is decoded with highdicom per segment against the
  sorted source SOP Instance UIDs; image slices without a SEG frame are background (highdicom and dcmqi
  omit empty frames). FRACTIONAL SEGs and RTSTRUCT are rejected with a clear message.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset

from kaapana_fhir.exceptions import MappingError

log = logging.getLogger(__name__)

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"


@dataclass
class SegmentInfo:
    number: int
    label: str
    property_type: dict[str, str] | None
    anatomic_region: dict[str, str] | None
    tracking_uid: str | None


@dataclass
class Volume:
    image: sitk.Image
    sop_uids: list[str]  # sorted along the slice normal, = image z index
    patient_id: str
    study_uid: str
    series_uid: str
    modality: str
    frame_of_reference: str | None
    study_date: str | None


def read_dicom_dir(path: str | Path) -> list[Dataset]:
    """All DICOM files below ``path`` (recursively; non-DICOM files are skipped)."""
    p = Path(path)
    if not p.exists():
        raise MappingError(f"{p}: directory does not exist")
    out: list[Dataset] = []
    for f in sorted(p.rglob("*") if p.is_dir() else [p]):
        if f.is_file():
            try:
                out.append(pydicom.dcmread(f))
            except pydicom.errors.InvalidDicomError:
                log.debug("skipping non-DICOM file %s", f)
    if not out:
        raise MappingError(f"{p}: no DICOM files found")
    return out


def _code(item: Any) -> dict[str, str] | None:
    if item is None:
        return None
    scheme = str(getattr(item, "CodingSchemeDesignator", ""))
    system = {"SCT": "http://snomed.info/sct", "DCM": "http://dicom.nema.org/resources/ontology/DCM",
              "LN": "http://loinc.org"}.get(scheme, f"urn:dicom:coding-scheme:{scheme}")
    value = str(getattr(item, "CodeValue", "") or getattr(item, "LongCodeValue", "") or "")
    if not value:
        return None
    return {"system": system, "code": value, "display": str(getattr(item, "CodeMeaning", ""))}


def build_volume(datasets: list[Dataset], *, source: str = "image series") -> Volume:
    """Stack single-frame image datasets into a SimpleITK image (see module docstring for the rules)."""
    if not datasets:
        raise MappingError(f"{source}: no image instances")
    ds0 = datasets[0]
    modality = str(getattr(ds0, "Modality", ""))
    if modality in ("SEG", "RTSTRUCT", "SR"):
        raise MappingError(f"{source}: Modality (0008,0060) {modality} is not an image series")
    try:
        iop = np.array([float(v) for v in ds0.ImageOrientationPatient], dtype=float)
        ps = [float(v) for v in ds0.PixelSpacing]
    except AttributeError as exc:
        raise MappingError(f"{source}: missing geometry attribute ({exc}); needs ImageOrientationPatient "
                           "(0020,0037) and PixelSpacing (0028,0030)") from None
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    rows, cols = int(ds0.Rows), int(ds0.Columns)
    keyed = []
    for ds in datasets:
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise MappingError(f"{source}: instance {ds.SOPInstanceUID} has Rows/Columns (0028,0010/0011) "
                               f"{ds.Rows}x{ds.Columns}, others {rows}x{cols} (rule: one geometry per series)")
        if not np.allclose([float(v) for v in ds.ImageOrientationPatient], iop, atol=1e-4):
            raise MappingError(
                f"{source}: instance {ds.SOPInstanceUID} has another ImageOrientationPatient (0020,0032)"
            )
        keyed.append((float(np.dot([float(v) for v in ds.ImagePositionPatient], normal)), ds))
    keyed.sort(key=lambda t: t[0])
    pos = np.array([k for k, _ in keyed])
    if len(pos) > 1:
        d = np.diff(pos)
        if np.any(d < 1e-4):
            raise MappingError(f"{source}: two instances share an ImagePositionPatient (0020,0032) along the normal "
                               "(rule: one slice per position; multiple acquisitions are not supported)")
        sz = float(np.median(d))
        if np.max(np.abs(d - sz)) > 0.01 * sz:
            raise MappingError(f"{source}: slice spacing is not uniform ({d.min():.3f}..{d.max():.3f} mm along the "
                               "normal, rule: within 1 %)")
    else:
        sz = float(getattr(ds0, "SliceThickness", 1.0) or 1.0)
    slices = []
    for _, ds in keyed:
        a = ds.pixel_array
        slope = float(getattr(ds, "RescaleSlope", 1) or 1)
        inter = float(getattr(ds, "RescaleIntercept", 0) or 0)
        if slope != 1.0 or not float(inter).is_integer():
            a = a.astype(np.float32) * np.float32(slope) + np.float32(inter)
        elif inter:
            a = a.astype(np.int32) + int(inter)
        slices.append(a)
    arr = np.stack(slices)
    if arr.dtype.kind in "iu" and arr.min() >= -32768 and arr.max() <= 32767:
        arr = arr.astype(np.int16)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((ps[1], ps[0], sz))
    img.SetOrigin(tuple(float(v) for v in keyed[0][1].ImagePositionPatient))
    img.SetDirection((row[0], col[0], normal[0], row[1], col[1], normal[1], row[2], col[2], normal[2]))
    return Volume(img, [str(ds.SOPInstanceUID) for _, ds in keyed], str(getattr(ds0, "PatientID", "")),
                  str(ds0.StudyInstanceUID), str(ds0.SeriesInstanceUID), modality,
                  str(getattr(ds0, "FrameOfReferenceUID", "")) or None, str(getattr(ds0, "StudyDate", "")) or None)


def check_seg(ds: Dataset, *, source: str = "SEG") -> None:
    """Reject inputs that are not a BINARY DICOM SEG, naming the tag and the rule."""
    modality = str(getattr(ds, "Modality", ""))
    sop_class = str(getattr(ds, "SOPClassUID", ""))
    if modality == "RTSTRUCT" or sop_class == RTSTRUCT_SOP_CLASS:
        raise MappingError(f"{source}: RTSTRUCT is not supported (Modality (0008,0060) RTSTRUCT); convert the "
                           "contours to a DICOM SEG first (e.g. with rt-utils or dcmqi)")
    if modality != "SEG" or sop_class != SEG_SOP_CLASS:
        raise MappingError(f"{source}: Modality (0008,0060) {modality!r} / SOPClassUID {sop_class} is not a "
                           "DICOM Segmentation (rule: SEG, 1.2.840.10008.5.1.4.1.1.66.4)")
    seg_type = str(getattr(ds, "SegmentationType", ""))
    if seg_type != "BINARY":
        raise MappingError(f"{source}: SegmentationType (0062,0001) {seg_type} is not supported (rule: BINARY; "
                           "threshold FRACTIONAL/LABELMAP segmentations to binary masks first)")


def referenced_series(ds: Dataset) -> tuple[str, str]:
    """(StudyInstanceUID, referenced SeriesInstanceUID) from ReferencedSeriesSequence (0008,1115)."""
    seq = getattr(ds, "ReferencedSeriesSequence", None)
    if not seq:
        raise MappingError(f"SEG {ds.SOPInstanceUID}: no ReferencedSeriesSequence (0008,1115), cannot find the image")
    return str(ds.StudyInstanceUID), str(seq[0].SeriesInstanceUID)


def segment_infos(seg: Any) -> list[SegmentInfo]:
    out = []
    for item in seg.SegmentSequence:
        pt = getattr(item, "SegmentedPropertyTypeCodeSequence", None)
        ar = getattr(item, "AnatomicRegionSequence", None)
        out.append(SegmentInfo(int(item.SegmentNumber), str(getattr(item, "SegmentLabel", "")),
                               _code(pt[0]) if pt else None, _code(ar[0]) if ar else None,
                               str(getattr(item, "TrackingUID", "")) or None))
    return out


def decode_masks(seg_ds: Dataset, volume: Volume, *, source: str = "SEG") -> dict[int, sitk.Image]:
    """One uint8 mask image per segment number, on the geometry of ``volume``."""
    import highdicom as hd

    check_seg(seg_ds, source=source)
    seg = hd.seg.Segmentation.from_dataset(seg_ds, copy=False)
    size = volume.image.GetSize()
    if (int(seg.Rows), int(seg.Columns)) != (size[1], size[0]):
        raise MappingError(f"{source}: Rows/Columns (0028,0010/0011) {seg.Rows}x{seg.Columns} do not match the image "
                           f"{size[1]}x{size[0]} (rule: mask and image share the geometry)")
    for_seg = str(getattr(seg_ds, "FrameOfReferenceUID", "")) or None
    if for_seg and volume.frame_of_reference and for_seg != volume.frame_of_reference:
        raise MappingError(f"{source}: FrameOfReferenceUID (0020,0052) {for_seg} differs from the image's "
                           f"{volume.frame_of_reference} (rule: same frame of reference)")
    referenced = {str(uid) for _, _, uid in seg.get_source_image_uids()}
    missing = referenced - {str(u) for u in volume.sop_uids}
    if missing:
        raise MappingError(f"{source}: {len(missing)} SOP instance(s) referenced by the SEG frames are not in image "
                           f"series {volume.series_uid} (e.g. {sorted(missing)[0]}; rule: ReferencedSOPInstanceUID "
                           "(0008,1155) must be a slice of the image)")
    masks = {}
    for info in segment_infos(seg_ds):
        arr = seg.get_pixels_by_source_instance(source_sop_instance_uids=volume.sop_uids,
                                                segment_numbers=[info.number], assert_missing_frames_are_empty=True,
                                                dtype=np.uint8)
        m = sitk.GetImageFromArray(np.ascontiguousarray(arr[..., 0]))
        m.CopyInformation(volume.image)
        masks[info.number] = m
    return masks
