"""Radiomics flow: DICOM SEG + referenced image series → pyradiomics per segment → FHIR (no Airflow).

``compute_from_dicomweb`` / ``compute_from_files`` fetch and decode (see :mod:`.radiomics_dicom`), run
pyradiomics per segment with explicit settings (``data/radiomics/default_settings.yaml`` unless given) and
return a :class:`ComputeResult` (a :class:`~kaapana_fhir.core.radiomics.mapping.RadiomicsRun` + report of the
image types / features actually computed and of those requested but skipped). ``write_run`` maps with
:func:`~kaapana_fhir.core.radiomics.mapping.map_run`, adds minimal Patient / ImagingStudy resources only when the
DICOM flow has not written them yet (HAPI enforces referential integrity) and writes transaction chunks.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from kaapana_fhir.clients.fhir import WriteResult
from kaapana_fhir.clients.protocols import DicomWebApi, FhirApi
from kaapana_fhir.core import bundle, limits
from kaapana_fhir.core.radiomics.mapping import (
    RadiomicsRun,
    SegmentFeatures,
    imaging_study_stub,
    map_run,
    patient_stub,
)
from kaapana_fhir.core.validate import validate_resource
from kaapana_fhir.exceptions import ConfigError, MappingError
from kaapana_fhir.flows.radiomics.compute import (
    Volume,
    build_volume,
    check_seg,
    decode_masks,
    read_dicom_dir,
    referenced_series,
    segment_infos,
)
from kaapana_fhir.flows.write import MergeCounts, Shared, write_merged

log = logging.getLogger(__name__)

DEFAULT_SETTINGS = Path(str(files("kaapana_fhir") / "data" / "radiomics" / "default_settings.yaml"))
ALL_IMAGE_TYPES_SETTINGS = DEFAULT_SETTINGS.with_name("all_image_types.yaml")
#: pyradiomics image type → prefix of its feature keys.
IMAGE_TYPE_PREFIX = {"Original": "original", "LoG": "log-sigma", "Wavelet": "wavelet", "LBP2D": "lbp-2D",
                     "LBP3D": "lbp-3D", "Square": "square", "SquareRoot": "squareroot", "Logarithm": "logarithm",
                     "Exponential": "exponential", "Gradient": "gradient"}


@dataclass
class ComputeResult:
    run: RadiomicsRun
    computed_image_types: list[str]
    skipped_image_types: list[str]
    feature_count: int
    issues: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class WrittenRun:
    """What :func:`write_run` wrote for one SEG: counts of the mapping, the server's confirmation of the
    radiomics resources (``written``) and of the Patient/ImagingStudy stubs (``referenced``: status per resource,
    create-only), issues, and the seconds spent mapping and writing."""

    seg_sop_uid: str
    groups: int
    features: int
    absent: int
    resources: int
    written: WriteResult
    referenced: MergeCounts
    issues: list[dict[str, Any]]
    map_s: float
    write_s: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form (CLI output, XCom)."""
        return {"seg_sop_uid": self.seg_sop_uid, "groups": self.groups, "features": self.features,
                "absent": self.absent, "resources": self.resources, "status_counts": dict(self.written.statuses),
                "referenced": self.referenced.as_dict(), "issues": list(self.issues), "map_s": self.map_s,
                "write_s": self.write_s}


@dataclass
class RadiomicsSummary:
    """Totals of one radiomics step over several SEG series (:func:`run_for_series`)."""

    segs: int = 0
    groups: int = 0
    features: int = 0
    absent: int = 0
    resources: int = 0
    computed_image_types: list[str] = field(default_factory=list)
    skipped_image_types: list[str] = field(default_factory=list)
    issues: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def add(self, computed: ComputeResult, written: WrittenRun) -> None:
        """Count one SEG: what was computed and what was written."""
        self.segs += 1
        self.groups += written.groups
        self.features += written.features
        self.absent += written.absent
        self.resources += written.resources
        self.computed_image_types = sorted(set(self.computed_image_types) | set(computed.computed_image_types))
        self.skipped_image_types = sorted(set(self.skipped_image_types) | set(computed.skipped_image_types))
        seg = computed.run.seg_sop_uid
        self.issues += [dict(i, seg=seg) for i in computed.issues + written.issues]
        for k, v in {**computed.timings, "map_s": written.map_s, "write_s": written.write_s}.items():
            self.timings[k] = self.timings.get(k, 0.0) + v

    def as_dict(self, max_issues: int | None = None) -> dict[str, Any]:
        """JSON-able form (XCom, CLI output); at most ``max_issues`` issues (``issue_count`` has them all)."""
        return {"segs": self.segs, "groups": self.groups, "features": self.features, "absent": self.absent,
                "resources": self.resources, "computed_image_types": list(self.computed_image_types),
                "skipped_image_types": list(self.skipped_image_types),
                "issues": self.issues[:max_issues] if max_issues is not None else list(self.issues),
                "issue_count": len(self.issues), "timings": {k: round(v, 4) for k, v in self.timings.items()}}


def load_settings(path: str | Path | None = None, override: dict[str, Any] | str | None = None) -> dict[str, Any]:
    """Read a pyradiomics parameter YAML (default: the shipped one) and deep-merge ``override`` (dict or YAML text)."""
    p = Path(path) if path else DEFAULT_SETTINGS
    try:  # bounded: size, depth, no aliases (alias bombs); keys are strings (YAML 1.1 ``yes:`` keys)
        data = limits.load_yaml(p)
    except limits.LimitError as exc:
        raise ConfigError(f"settings: {exc}") from None
    data = _check_settings(data, str(p))
    if override:
        if isinstance(override, str):
            try:
                override = limits.loads_yaml(override, source="settings override")
            except limits.LimitError as exc:
                raise ConfigError(str(exc)) from None
        override = _check_settings(override, "settings override")
        for key, value in override.items():
            if key == "setting" and isinstance(value, dict):
                data.setdefault("setting", {}).update(value)
            else:
                data[key] = value
    return data


def _check_settings(data: Any, source: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: settings must be a mapping with keys setting/imageType/featureClass "
                          f"(got {type(data).__name__})")
    unknown = {str(k) for k in data} - {"setting", "imageType", "featureClass", "voxelSetting"}
    if unknown:
        raise ConfigError(f"{source}: unknown top-level key(s) {sorted(unknown)} (rule: pyradiomics parameter file: "
                          "setting, imageType, featureClass, voxelSetting)")
    for key in ("setting", "imageType", "featureClass"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise ConfigError(f"{source}: '{key}' must be a mapping (got {type(data[key]).__name__})")
    return copy.deepcopy(data)


def make_extractor(settings: dict[str, Any]) -> Any:
    from radiomics import featureextractor

    try:
        return featureextractor.RadiomicsFeatureExtractor(copy.deepcopy(settings))
    except Exception as exc:  # pykwalify SchemaError / ValueError from pyradiomics' parameter validation
        raise ConfigError(f"pyradiomics rejected the settings: {type(exc).__name__}: {str(exc)[:500]}") from None


def pyradiomics_version() -> str:
    import radiomics

    return str(radiomics.__version__).lstrip("v")


def extract(volume: Volume, masks: dict[int, Any], settings: dict[str, Any],
            labels: dict[int, str] | None = None) -> tuple[list[SegmentFeatures], list[dict[str, Any]], float]:
    """Run pyradiomics per segment; returns (segments, issues, seconds spent in ``execute``)."""
    import numpy as np
    import SimpleITK as sitk

    extractor = make_extractor(settings)
    label = int((settings.get("setting") or {}).get("label", 1) or 1)
    logging.getLogger("radiomics").setLevel(logging.WARNING)
    segs, issues, t_exec = [], [], 0.0
    for num in sorted(masks):
        mask = masks[num]
        name = (labels or {}).get(num, f"segment {num}")
        voxels = int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))
        if voxels == 0:
            issues.append({"tag": f"segment {num} ({name})", "value": "0 voxels",
                           "rule": "empty segment: no features, written as dataAbsentReason"})
            segs.append(SegmentFeatures(num, name, {}, error="empty segment (0 voxels)", voxel_count=0))
            continue
        if label != 1:
            mask = sitk.Cast(mask, sitk.sitkUInt8) * label
        t = time.perf_counter()
        try:
            result = extractor.execute(volume.image, mask, label=label)
        except (ValueError, RuntimeError, IndexError) as exc:  # pyradiomics: too few voxels, bad geometry
            issues.append({"tag": f"segment {num} ({name})", "value": str(exc)[:300], "rule": "pyradiomics failed"})
            segs.append(SegmentFeatures(num, name, {}, error=f"pyradiomics failed: {str(exc)[:200]}",
                                        voxel_count=voxels))
            continue
        finally:
            t_exec += time.perf_counter() - t
        feats = {k: v for k, v in result.items() if not k.startswith("diagnostics_")}
        segs.append(SegmentFeatures(num, name, feats, voxel_count=voxels))
    return segs, issues, t_exec


def image_type_report(settings: dict[str, Any], segs: list[SegmentFeatures]) -> tuple[list[str], list[str]]:
    """(image types that produced features, requested image types that produced none)."""
    computed = sorted({k.split("_")[0] for s in segs for k in s.features})
    requested = list((settings.get("imageType") or {}).keys())
    ran = [s for s in segs if s.features]
    skipped = []
    for itype in requested:
        prefix = IMAGE_TYPE_PREFIX.get(itype, itype.lower())
        if ran and not any(c.startswith(prefix) for c in computed):
            skipped.append(itype)
            log.warning("image type %s was requested but produced no features (pyradiomics skipped it: e.g. LoG "
                        "needs sigma, LBP2D needs scikit-image, LBP3D fails with SciPy >= 1.17)", itype)
    return computed, skipped


def compute(cts: list[Any], seg_ds: Any, settings: dict[str, Any], *, patient_system: str | None = None,
            source: str = "SEG") -> ComputeResult:
    """Decode + extract for an image series (pydicom datasets) and one SEG dataset."""
    t0 = time.perf_counter()
    check_seg(seg_ds, source=source)
    volume = build_volume(cts, source=f"image series of {source}")
    infos = {i.number: i for i in segment_infos(seg_ds)}
    masks = decode_masks(seg_ds, volume, source=source)
    t_decode = time.perf_counter() - t0
    segs, issues, t_exec = extract(volume, masks, settings, {n: i.label for n, i in infos.items()})
    for s in segs:
        info = infos.get(s.segment_number)
        if info:
            s.property_type, s.anatomic_region = info.property_type, info.anatomic_region
            s.tracking_uid = info.tracking_uid
    computed, skipped = image_type_report(settings, segs)
    date = volume.study_date
    run = RadiomicsRun(
        patient_value=volume.patient_id, study_uid=volume.study_uid, seg_sop_uid=str(seg_ds.SOPInstanceUID),
        segments=segs, image_series_uid=volume.series_uid, seg_series_uid=str(seg_ds.SeriesInstanceUID),
        modality=volume.modality, settings=settings, pyradiomics_version=pyradiomics_version(),
        patient_system=patient_system,
        effective=f"{date[:4]}-{date[4:6]}-{date[6:8]}" if date and len(date) == 8 and date.isdigit() else None,
        seg_study_uid=str(seg_ds.StudyInstanceUID) if str(seg_ds.StudyInstanceUID) != volume.study_uid else None)
    n = sum(len(s.features) for s in segs)
    log.info("radiomics: %d segment(s), %d features, image types %s%s", len(segs), n, computed,
             f", skipped {skipped}" if skipped else "")
    return ComputeResult(run, computed, skipped, n, issues,
                         {"decode_s": t_decode, "execute_s": t_exec, "compute_s": time.perf_counter() - t0})


def compute_from_files(ct_dir: str | Path, seg_file: str | Path, settings: dict[str, Any], *,
                       patient_system: str | None = None) -> ComputeResult:
    cts = [ds for ds in read_dicom_dir(ct_dir) if str(getattr(ds, "Modality", "")) not in ("SEG", "RTSTRUCT")]
    seg_ds = read_dicom_dir(seg_file)[0]
    return compute(cts, seg_ds, settings, patient_system=patient_system, source=str(seg_file))


def compute_from_dicomweb(dicomweb: DicomWebApi, seg_series_uid: str, settings: dict[str, Any], *,
                          patient_system: str | None = None) -> list[ComputeResult]:
    """Fetch SEG series ``seg_series_uid`` and its referenced series via DICOMweb; one result per SEG instance."""
    t0 = time.perf_counter()
    rec = dicomweb.find_series(seg_series_uid)
    if not rec:
        raise MappingError(f"SEG series {seg_series_uid} (0020,000E) not found on the DICOMweb server")
    study_uid = rec["0020000D"]["Value"][0]
    seg_sets = dicomweb.retrieve_series(study_uid, seg_series_uid)
    if not seg_sets:
        raise MappingError(f"SEG series {seg_series_uid}: no instances retrieved")
    results = []
    cache: dict[str, list[Any]] = {}
    for seg_ds in seg_sets:
        src = f"SEG {seg_ds.SOPInstanceUID}"
        check_seg(seg_ds, source=src)
        st, ref_series = referenced_series(seg_ds)
        if ref_series not in cache:
            cts = dicomweb.retrieve_series(st, ref_series)
            if not cts:
                other = dicomweb.find_series(ref_series)
                if other:
                    cts = dicomweb.retrieve_series(other["0020000D"]["Value"][0], ref_series)
            if not cts:
                raise MappingError(f"{src}: referenced series {ref_series} (ReferencedSeriesSequence (0008,1115)) is "
                                   "not on the DICOMweb server (rule: store the image series before the SEG)")
            cache[ref_series] = cts
        t_fetch = time.perf_counter() - t0
        res = compute(cache[ref_series], seg_ds, settings, patient_system=patient_system, source=src)
        res.timings["fetch_s"] = t_fetch
        results.append(res)
        t0 = time.perf_counter()
    return results


def stubs_for(run: RadiomicsRun) -> list[dict[str, Any]]:
    """Minimal Patient / ImagingStudy resources the radiomics resources reference (create-only: the DICOM flow
    owns them)."""
    stubs = [patient_stub(run), imaging_study_stub(run, run.study_uid, [(run.image_series_uid, run.modality)]
                                                  if run.image_series_uid else [])]
    if run.seg_study_uid:
        stubs.append(imaging_study_stub(run, run.seg_study_uid, []))
    return stubs


def _group_last(entry: dict[str, Any]) -> tuple[int, int]:
    """Write order: referenced resources first, feature Observations, then the group Observations (``hasMember``)
    last, so a run killed mid-write never leaves a group that points to a partial feature set."""
    return bundle.sort_key(entry), 1 if "hasMember" in entry["resource"] else 0


def entries_for(run: RadiomicsRun, *, layout: str = "members", fhir: FhirApi | None = None,
                validate: bool = True, with_stubs: bool | None = None) -> tuple[list[dict[str, Any]], Any]:
    """Transaction entries of a run (referenced resources first, group Observations last).

    The Patient/ImagingStudy stubs are included for a Bundle file (``fhir`` None); a FHIR writer creates them
    with :func:`write_run` (create-only, never replacing the DICOM flow's richer resources)."""
    mapped = map_run(run, layout=layout)
    include = (fhir is None) if with_stubs is None else with_stubs
    resources = (stubs_for(run) if include else []) + mapped.resources
    if validate:
        seen = set()
        for r in resources:  # one of each kind is enough in the hot path; all in tests
            key = (r["resourceType"], "hasMember" in r)
            if key not in seen:
                validate_resource(r)
                seen.add(key)
    entries = sorted((bundle.put_entry(r) for r in resources), key=_group_last)
    return entries, mapped


def write_run(fhir: FhirApi, run: RadiomicsRun, *, layout: str = "members", chunk_size: int = 500) -> WrittenRun:
    """Map and write one run; returns what was written (counts, the server's confirmation, issues).

    Patient and ImagingStudy stubs go through the shared strategy (:func:`kaapana_fhir.flows.write.write_merged`)
    as create-only resources: written only when absent, and a concurrent DICOM write is never replaced (a stub
    that overwrote a concurrent create is detected from the version and the richer version restored). The
    radiomics resources follow in transaction chunks, the group Observations last: until a run has completed,
    no group Observation presents its (partial) feature set; a re-run writes the same ids (no duplicates).
    """
    t0 = time.perf_counter()
    entries, mapped = entries_for(run, layout=layout, fhir=fhir, with_stubs=False)
    stubs = stubs_for(run)
    for stub in stubs:
        validate_resource(stub)
    t_map = time.perf_counter() - t0
    t = time.perf_counter()
    shared = write_merged(fhir, [Shared(stub) for stub in stubs], label=f"radiomics SEG {run.seg_sop_uid}")
    written = fhir.write_entries(entries, chunk_size=chunk_size)
    return WrittenRun(seg_sop_uid=run.seg_sop_uid, groups=mapped.groups, features=mapped.features,
                      absent=mapped.absent, resources=len(entries), written=written, referenced=shared,
                      issues=mapped.issues, map_s=t_map, write_s=time.perf_counter() - t)


def resolve_settings(settings_path: str | Path | None = None, preset: str | None = None,
                     settings_override: Any = None) -> dict[str, Any]:
    """Settings from an explicit file, else a preset (``default`` / ``all_image_types``), plus an override."""
    if not settings_path and preset:
        presets = {"default": DEFAULT_SETTINGS, "all_image_types": ALL_IMAGE_TYPES_SETTINGS}
        if preset not in presets:
            raise ConfigError(f"settings preset {preset!r} is not one of {sorted(presets)}")
        settings_path = presets[preset]
    return load_settings(settings_path, settings_override)


def run_for_series(dicomweb: DicomWebApi, fhir: FhirApi, seg_series_uids: list[str], *,
                   settings_path: str | Path | None = None,
                   preset: str | None = None, settings_override: Any = None, layout: str = "members",
                   patient_system: str | None = None) -> RadiomicsSummary:
    """The whole step for SEG series on a PACS: fetch, decode, extract, map, write; the totals."""
    t0 = time.perf_counter()
    settings = resolve_settings(settings_path, preset, settings_override)
    out = RadiomicsSummary()
    for uid in seg_series_uids:
        for res in compute_from_dicomweb(dicomweb, uid, settings, patient_system=patient_system):
            out.add(res, write_run(fhir, res.run, layout=layout))
    out.timings["total_s"] = time.perf_counter() - t0
    return out


def run_from_result_file(path: str | Path, *, study_uid: str, seg_series_uid: str, patient_value: str,
                         seg_sop_uid: str | None = None, modality: str = "CT", image_series_uid: str | None = None,
                         settings: dict[str, Any] | None = None, pyradiomics_version: str = "unknown",
                         patient_system: str | None = None) -> tuple[RadiomicsRun, list[dict[str, Any]], str]:
    """A :class:`RadiomicsRun` from a result file computed elsewhere (Kaapana / pyradiomics JSON or CSV, MITK
    CLGlobalImageFeatures XML / xq JSON / CSV; MITK files set the Device name, version and settings).

    Without ``seg_sop_uid`` the SEG series UID keys the ids (an issue says so).
    """
    from kaapana_fhir.core.radiomics.results import parse_result_file

    segs, issues, fmt = parse_result_file(path)
    if not seg_sop_uid:
        issues.append({"tag": "SOPInstanceUID (0008,0018)", "value": seg_series_uid,
                       "rule": "SEG SOP Instance UID not given; ids keyed by the SEG series UID"})
    src = next((s.source for s in segs if s.source), None) or {}  # e.g. MITK XML: software, version, CLI settings
    run = RadiomicsRun(patient_value=patient_value, study_uid=study_uid, seg_sop_uid=seg_sop_uid or seg_series_uid,
                       segments=segs, image_series_uid=image_series_uid, seg_series_uid=seg_series_uid,
                       modality=modality, settings=settings or src.get("settings") or {"source": fmt},
                       pyradiomics_version=src.get("version") or pyradiomics_version, patient_system=patient_system,
                       software=src.get("software") or "pyradiomics")
    return run, issues, fmt
