"""A radiotherapy/radiomics-style study (CT, RTSTRUCT, several SEG and SR series) built with pydicom/highdicom.

The structure follows NSCLC-Radiomics in IDC (per study: 1 CT, 1 RTSTRUCT, SEGs from the original collection and
from nnU-Net, several SR measurement reports); no data of that collection are used. One template study is built with
highdicom once; :func:`clone_study` gives copies with fresh UIDs and another patient, which is fast enough to fill a
PACS with hundreds of studies. The RTSTRUCT and SR series carry an empty PatientSex and have the lowest series
numbers, as in the real collection, where a PACS lists them first.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

import numpy as np

from tests.support.dicom_json import file_dataset

STUDY_KEYS = ("StudyInstanceUID",)
RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"


def _uid(prefix: str, n: int) -> str:
    return f"{prefix}.{n}"


def _ct(study: str, series: str, frame: str, pid: str, n: int, size: int = 16) -> list[Any]:
    from pydicom.uid import CTImageStorage

    out = []
    for i in range(n):
        ds = file_dataset(CTImageStorage)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientID, ds.PatientName, ds.PatientSex, ds.PatientBirthDate = pid, pid, "M", "19500101"
        ds.PatientAge = "070Y"
        ds.StudyDate, ds.StudyTime, ds.SeriesDate, ds.SeriesTime = "20080615", "093000", "20080615", "093500"
        ds.AccessionNumber, ds.StudyDescription, ds.StudyID, ds.ReferringPhysicianName = "", "", "1", ""
        ds.Modality, ds.SeriesNumber, ds.SeriesDescription = "CT", 6, ""
        ds.BodyPartExamined = "LUNG"
        ds.Manufacturer, ds.ManufacturerModelName, ds.DeviceSerialNumber = "SIEMENS", "Biograph 40", "1234"
        ds.KVP, ds.XRayTubeCurrent, ds.ExposureTime, ds.Exposure = 120, 80, 500, 40
        ds.ConvolutionKernel, ds.CTDIvol = "B19f", 3.2
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [0, 0, float(3 * i)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [0.98, 0.98], 3
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = (np.arange(size * size, dtype=np.int16) + i).tobytes()
        out.append(ds)
    return out


def _rtstruct(ct: list[Any], series: str, number: int) -> Any:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = file_dataset(RTSTRUCT_STORAGE)
    for k in ("StudyInstanceUID", "PatientID", "PatientName", "PatientBirthDate", "StudyDate", "StudyTime",
              "AccessionNumber", "StudyID", "ReferringPhysicianName", "StudyDescription"):
        setattr(ds, k, getattr(ct[0], k))
    ds.PatientSex = ""  # as in the real collection: the RTSTRUCT has no sex
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.Modality = series, number, "RTSTRUCT"
    ds.SeriesDate, ds.SeriesTime = "20080616", "120000"
    ds.Manufacturer, ds.ManufacturerModelName = "Varian Medical Systems", "ARIA RadOnc"
    ds.StructureSetLabel, ds.StructureSetDate, ds.StructureSetTime = "RTSTRUCT", "20080616", "120000"
    roi = Dataset()
    roi.ROINumber, roi.ReferencedFrameOfReferenceUID, roi.ROIName = 1, ct[0].FrameOfReferenceUID, "GTV-1"
    roi.ROIGenerationAlgorithm = "MANUAL"
    ds.StructureSetROISequence = Sequence([roi])
    ref = Dataset()
    ref.FrameOfReferenceUID = ct[0].FrameOfReferenceUID
    ds.ReferencedFrameOfReferenceSequence = Sequence([ref])
    ds.InstanceNumber = 1
    return ds


def _seg(ct: list[Any], series: str, number: int, label: str, manufacturer: str) -> Any:
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    mask = np.zeros((len(ct), ct[0].Rows, ct[0].Columns), dtype=bool)
    mask[1:-1, 4:10, 4:10] = True
    desc = hd.seg.SegmentDescription(
        segment_number=1, segment_label=label, segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
    seg = hd.seg.Segmentation(
        source_images=ct, pixel_array=mask, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[desc], series_instance_uid=series, series_number=number,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer=manufacturer,
        manufacturer_model_name="dcmqi", software_versions="1.0", device_serial_number="1")
    return seg


def _sr(ct: list[Any], seg: Any, series: str, number: int) -> Any:
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    context = hd.sr.ObservationContext()
    group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="GTV-1"),
        referenced_segment=hd.sr.ReferencedSegment(sop_class_uid=seg.SOPClassUID,
                                                    sop_instance_uid=seg.SOPInstanceUID, segment_number=1,
                                                    source_series=hd.sr.SourceSeriesForSegmentation(
                                                        ct[0].SeriesInstanceUID)),
        measurements=[hd.sr.Measurement(name=codes.SCT.Volume, value=12.5, unit=codes.UCUM.CubicMillimeter)])
    report = hd.sr.MeasurementReport(observation_context=context, procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
                                     imaging_measurements=[group])
    sr = hd.sr.Comprehensive3DSR(evidence=[*ct, seg], content=report[0], series_instance_uid=series,
                                 series_number=number, sop_instance_uid=generate_uid(), instance_number=1,
                                 manufacturer="BPR", record_evidence=True)
    from pydicom.dataelem import DataElement

    sr[0x00100040] = DataElement(0x00100040, "CS", "")  # a new element: highdicom shares the evidence's elements
    return sr


def template_study(pid: str = "RT-000", n_ct: int = 4, n_seg: int = 4, n_sr: int = 4) -> list[Any]:
    """One study: RTSTRUCT (series 1), SRs (2..), CT (5), SEGs (10..); all instances as pydicom Datasets."""
    from pydicom.uid import generate_uid

    study = generate_uid()
    ct = _ct(study, generate_uid(), generate_uid(), pid, n_ct)
    out: list[Any] = list(ct)
    out.append(_rtstruct(ct, generate_uid(), 1))
    segs = [_seg(ct, generate_uid(), 10 + k, f"GTV-{k + 1}", ("QIICR", "nnU-Net")[k % 2]) for k in range(n_seg)]
    out += segs
    out += [_sr(ct, segs[k % len(segs)], generate_uid(), 2 + k) for k in range(n_sr)]
    return out


_BYTES: dict[int, list[bytes]] = {}


def template_bytes(template: list[Any]) -> list[bytes]:
    """The template's instances serialised once (cloning re-reads bytes, much faster than deepcopy)."""
    key = id(template)
    if key not in _BYTES:
        blobs = []
        for ds in template:
            buf = BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            blobs.append(buf.getvalue())
        _BYTES[key] = blobs
    return _BYTES[key]


def clone_study(template: list[Any], pid: str, index: int, study_date: str | None = None) -> list[Any]:
    """A copy of ``template`` with fresh Study/Series/SOP/FrameOfReference UIDs and PatientID ``pid``.

    References inside SEG/SR (to CT/SEG instances) are not rewritten: the header mapping does not follow them.
    """
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    new_study, frame = generate_uid(), generate_uid()
    series_map: dict[str, str] = {}
    out = []
    for blob in template_bytes(template):
        c = dcmread(BytesIO(blob))
        ds = c
        c.StudyInstanceUID = new_study
        c.SeriesInstanceUID = series_map.setdefault(str(ds.SeriesInstanceUID), generate_uid())
        c.SOPInstanceUID = generate_uid()
        c.file_meta.MediaStorageSOPInstanceUID = c.SOPInstanceUID
        c.PatientID = pid
        c.PatientName = pid
        if "FrameOfReferenceUID" in c:
            c.FrameOfReferenceUID = frame
        if study_date:
            c.StudyDate = study_date
        out.append(c)
    return out
