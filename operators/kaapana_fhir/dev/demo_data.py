"""Demo / test dataset: small DICOM CT series + DICOM SEG per patient, derived from pyradiomics' ``lung1``.

Source: the ``lung1`` CT + tumour label of the pyradiomics 3.0.1 sdist (``data/lung1_{image,label}.nrrd``,
BSD-3-Clause, Copyright 2017 Harvard Medical School). The package ships only a crop around the tumour
(``data/demo/lung1_crop_{image,label}.nrrd``, 16 x 96 x 96 voxels); :func:`extract_lung1_crop` rebuilds it
from the sdist (``pip download --no-deps --no-binary :all: pyradiomics==3.0.1``).

:func:`make_demo_dataset` derives ``n_patients`` cases (PatientID (0010,0020) ``LUNG1-001``...) from the
crop, deterministic for a given seed (UIDs are ``2.25.<uuid5>``), varied per patient so features differ:

* crop window and intensity offset + noise differ; the tumour mask is dilated or eroded in-plane;
* patient 2 has a second segment ("Lung parenchyma" box) - the multi-segment case;
* patient 3 has a second segment drawn on one slice only - the partial-slice case (every tumour
  segment already covers only 3 of the slices: SEG frames of empty slices are omitted);
* patient 5 is stored with the slice normal pointing to -z (ImageOrientationPatient (0020,0037) column
  direction flipped) and files written in shuffled InstanceNumber order.

No Airflow and no network.
"""

from __future__ import annotations

import json
import logging
import tarfile
import uuid
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from kaapana_fhir.exceptions import ConfigError

log = logging.getLogger(__name__)

DEMO_DATA = Path(str(files("kaapana_fhir") / "dev" / "data" / "demo"))
CROP_IMAGE = DEMO_DATA / "lung1_crop_image.nrrd"
CROP_LABEL = DEMO_DATA / "lung1_crop_label.nrrd"
#: Crop box of lung1 (index space, x/y/z start and size) that holds the whole tumour (z 32-34).
CROP_INDEX = (170, 312, 26)
CROP_SIZE = (96, 96, 16)
#: Per-patient window inside the crop (x, y, z).
WINDOW = (64, 64, 10)
UID_NAMESPACE = uuid.UUID("6f1c1d2e-5b0e-4c55-9a37-6b6b7f3d1a01")
STUDY_DATE = "20200101"


def det_uid(*parts: Any) -> str:
    """Deterministic DICOM UID ``2.25.<uuid5 as int>`` (≤ 64 chars)."""
    return "2.25." + str(uuid.uuid5(UID_NAMESPACE, "/".join(str(p) for p in parts)).int)


def extract_lung1_crop(source: str | Path, out_dir: str | Path = DEMO_DATA) -> tuple[Path, Path]:
    """Write the shipped crop from the pyradiomics sdist (``.tar.gz``) or its extracted ``data/`` folder."""
    source = Path(source)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if source.is_file() and source.name.endswith(".tar.gz"):
        tmp = out_dir / "_sdist"
        with tarfile.open(source) as tar:
            names = [m for m in tar.getmembers() if m.name.endswith(("data/lung1_image.nrrd", "data/lung1_label.nrrd"))]
            if len(names) != 2:
                raise ConfigError(f"{source}: no data/lung1_image.nrrd + lung1_label.nrrd (rule: a pyradiomics sdist)")
            tar.extractall(tmp, members=names, filter="data")
        data_dir = Path(names[0].name).parent
        source = tmp / data_dir
    img = sitk.ReadImage(str(source / "lung1_image.nrrd"))
    lbl = sitk.ReadImage(str(source / "lung1_label.nrrd"))
    out_img, out_lbl = out_dir / CROP_IMAGE.name, out_dir / CROP_LABEL.name
    sitk.WriteImage(sitk.RegionOfInterest(img, CROP_SIZE, CROP_INDEX), str(out_img), useCompression=True)
    sitk.WriteImage(sitk.Cast(sitk.RegionOfInterest(lbl, CROP_SIZE, CROP_INDEX), sitk.sitkUInt8), str(out_lbl),
                    useCompression=True)
    return out_img, out_lbl


@dataclass
class DemoCase:
    """One derived patient: the volumes written to DICOM (for direct pyradiomics comparisons)."""

    index: int
    patient_id: str
    image: sitk.Image
    masks: dict[int, sitk.Image]
    labels: dict[int, str]
    variant: list[str] = field(default_factory=list)
    flip_normal: bool = False


def _load_crop() -> tuple[sitk.Image, sitk.Image]:
    if not CROP_IMAGE.exists() or not CROP_LABEL.exists():
        raise ConfigError(f"demo source {CROP_IMAGE} is missing; rebuild it with "
                          "kaapana_fhir.dev.demo_data.extract_lung1_crop(<pyradiomics sdist>)")
    return sitk.ReadImage(str(CROP_IMAGE)), sitk.ReadImage(str(CROP_LABEL))


def _tumour_bbox(lbl: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    idx = np.argwhere(lbl > 0)  # z, y, x
    return idx.min(axis=0), idx.max(axis=0)


def demo_case(index: int, seed: int = 0, patient_prefix: str = "LUNG1") -> DemoCase:
    """The volumes of patient ``index`` (0-based); same arguments → same arrays (the prefix only names it)."""
    img, lbl = _load_crop()
    arr = sitk.GetArrayFromImage(img).astype(np.int32)
    lab = sitk.GetArrayFromImage(lbl).astype(np.uint8)
    rng = np.random.default_rng(seed * 1000 + index)
    lo, hi = _tumour_bbox(lab)
    start = []
    for axis, w in zip((0, 1, 2), (WINDOW[2], WINDOW[1], WINDOW[0]), strict=False):
        n = arr.shape[axis]
        smin, smax = max(0, hi[axis] + 2 - w + 1), min(n - w, lo[axis] - 2)
        start.append(int(rng.integers(smin, smax + 1)) if smax >= smin else max(0, min(n - w, smin)))
    z0, y0, x0 = start
    sl = (slice(z0, z0 + WINDOW[2]), slice(y0, y0 + WINDOW[1]), slice(x0, x0 + WINDOW[0]))
    shift = int(rng.integers(-40, 41))
    noise = rng.normal(0.0, 4.0, size=arr[sl].shape).round().astype(np.int32) if index else 0
    a = np.clip(arr[sl] + (shift if index else 0) + noise, -1024, 3071).astype(np.int16)
    m = lab[sl].copy()
    variant = [f"window z{z0} y{y0} x{x0}", f"intensity {shift if index else 0:+d} HU"]
    if index % 3 == 1:
        m = _morph(m, dilate=True)
        variant.append("tumour dilated 1 voxel in-plane")
    elif index % 3 == 2:
        m = _morph(m, dilate=False)
        variant.append("tumour eroded 1 voxel in-plane")
    masks = {1: m}
    labels = {1: "GTV-1"}
    if index == 1:  # multi-segment: a box of parenchyma away from the tumour
        extra = np.zeros_like(m)
        ys, xs = (2, 10) if m[:, :16, :16].sum() == 0 else (46, 54)
        extra[2:6, ys:ys + 8, xs:xs + 8] = 1
        extra[m > 0] = 0
        masks[2], labels[2] = extra, "Lung parenchyma"
        variant.append("second segment (box)")
    if index == 2:  # a segment on one slice only
        extra = np.zeros_like(m)
        zt = int(np.argwhere(m > 0)[:, 0].max())
        yy, xx = np.mgrid[0:WINDOW[1], 0:WINDOW[0]]
        disk = (yy - 8) ** 2 + (xx - 8) ** 2 <= 9
        extra[zt][disk] = 1
        extra[m > 0] = 0
        masks[2], labels[2] = extra, "Lymph node"
        variant.append("second segment on one slice")
    flip = index == 4
    spacing = img.GetSpacing()
    origin = np.array(img.TransformContinuousIndexToPhysicalPoint((x0, y0, z0)))
    direction = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    if flip:  # same voxels in space, stored with column direction -y and slice normal -z
        origin = origin + np.array([0.0, (WINDOW[1] - 1) * spacing[1], (WINDOW[2] - 1) * spacing[2]])
        a = a[::-1, ::-1, :]
        masks = {k: v[::-1, ::-1, :] for k, v in masks.items()}
        direction = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, -1.0)
        variant.append("slice normal -z, files in shuffled order")
    image = _to_image(np.ascontiguousarray(a), spacing, origin, direction)
    mask_images = {k: _to_image(np.ascontiguousarray(v), spacing, origin, direction) for k, v in masks.items()}
    return DemoCase(index, f"{patient_prefix}-{index + 1:03d}", image, mask_images, labels, variant, flip)


def _morph(m: np.ndarray, *, dilate: bool) -> np.ndarray:
    im = sitk.GetImageFromArray(m)
    f = sitk.BinaryDilate if dilate else sitk.BinaryErode
    out = sitk.GetArrayFromImage(f(im, [1, 1, 0], sitk.sitkBall, 0, 1))
    return out.astype(np.uint8)


def _to_image(
    a: np.ndarray, spacing: tuple[float, ...], origin: np.ndarray, direction: tuple[float, ...]
) -> sitk.Image:
    im = sitk.GetImageFromArray(a)
    im.SetSpacing(tuple(float(s) for s in spacing))
    im.SetOrigin(tuple(float(o) for o in origin))
    im.SetDirection(direction)
    return im


def make_demo_dataset(out_dir: str | Path, n_patients: int = 5, seed: int = 0,
                      patient_prefix: str = "LUNG1") -> dict[str, Any]:
    """Write ``<out_dir>/<PatientID>/ct/*.dcm`` and ``<PatientID>/seg.dcm`` per patient + ``manifest.json``.

    ``patient_prefix`` names the patients (``<prefix>-001``...; tests use unique prefixes on shared servers);
    UIDs depend on seed and PatientID. Returns the manifest:
    ``{"source": ..., "patients": [{patient_id, study_uid, ct_series_uid,
    seg_series_uid, seg_sop_uid, ct_dir, seg_file, segments: [{number, label, voxels, slices}], variant}]}``.
    """
    from kaapana_fhir.dev.demo_dicom import write_case

    if n_patients < 1:
        raise ConfigError(f"n_patients must be >= 1 (got {n_patients})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    patients = []
    for i in range(n_patients):
        case = demo_case(i, seed, patient_prefix)
        entry = write_case(case, out / case.patient_id, seed=seed)
        entry["variant"] = case.variant
        patients.append(entry)
        log.info("demo patient %s: %d CT slices, %d segment(s)", case.patient_id, WINDOW[2], len(case.masks))
    manifest = {
        "source": "pyradiomics 3.0.1 sdist data/lung1_{image,label}.nrrd (BSD-3-Clause, "
                  "Copyright 2017 Harvard Medical School), cropped and varied by kaapana_fhir.dev.demo_data",
        "seed": seed,
        "patients": patients,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def fetch_pyradiomics_sdist(dest: str | Path, version: str = "3.0.1") -> Path:
    """Download the pyradiomics sdist (34 MB, holds ``data/lung1_*.nrrd``) from PyPI with pip; returns its path."""
    import subprocess
    import sys

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    found = sorted(dest.glob(f"pyradiomics-{version}.tar.gz"))
    if found:
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation", "--no-binary", ":all:",
           "-d", str(dest), f"pyradiomics=={version}"]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    found = sorted(dest.glob(f"pyradiomics-{version}.tar.gz"))
    if res.returncode != 0 or not found:
        raise ConfigError(f"pip download pyradiomics=={version} failed: {res.stderr[-500:]}")
    return found[0]


def lung1_full_case(sdist: str | Path, patient_id: str = "LUNG1-FULL") -> DemoCase:
    """The whole lung1 case (512 x 512 x 48) from the sdist, for benchmarks (not shipped)."""
    sdist = Path(sdist)
    with tarfile.open(sdist) as tar:
        members = {Path(m.name).name: m for m in tar.getmembers()
                   if m.name.endswith(("data/lung1_image.nrrd", "data/lung1_label.nrrd"))}
        if len(members) != 2:
            raise ConfigError(f"{sdist}: no data/lung1_image.nrrd + lung1_label.nrrd")
        tar.extractall(sdist.parent / "_lung1", members=list(members.values()), filter="data")
    data = sdist.parent / "_lung1" / Path(members["lung1_image.nrrd"].name).parent
    img = sitk.ReadImage(str(data / "lung1_image.nrrd"))
    lbl = sitk.Cast(sitk.ReadImage(str(data / "lung1_label.nrrd")), sitk.sitkUInt8)
    return DemoCase(0, patient_id, img, {1: lbl}, {1: "GTV-1"}, ["full lung1"])
