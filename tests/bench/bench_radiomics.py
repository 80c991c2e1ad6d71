"""Radiomics bench: pyradiomics ``execute`` alone vs the whole step (DICOMweb fetch, decode, extract, map, write).

Full mode uses the whole pyradiomics lung1 case (512x512x48 CT, downloaded as the pyradiomics sdist through
pip); quick mode (CI) the shipped 64x64x10 crop. Both measured in the same run on the same volumes. Also an
all-image-types run (LoG, wavelet, ...): features, Bundle size and FHIR write time.
"""

from __future__ import annotations

import json
import time
import uuid

from kaapana_fhir.clients.dicomweb import DicomWeb
from kaapana_fhir.clients.fhir import FhirClient
from kaapana_fhir.core.bundle import transaction
from kaapana_fhir.dev.demo_data import demo_case, fetch_pyradiomics_sdist, lung1_full_case
from kaapana_fhir.dev.demo_dicom import write_case
from kaapana_fhir.flows.radiomics import flow as flow
from kaapana_fhir.flows.radiomics.compute import read_dicom_dir


def run(ctx):  # noqa: ANN001, ANN201
    from radiomics import featureextractor
    from run import Row

    st = ctx.stack()
    dicomweb, fhir = DicomWeb(st.dicomweb_url), FhirClient(st.fhir_url)
    tag = "RADB" + uuid.uuid4().hex[:6].upper()
    seed = uuid.uuid4().int % 100000
    if ctx.quick:
        case, what = demo_case(0, seed, tag), "lung1 crop 64x64x10"
    else:
        case, what = lung1_full_case(fetch_pyradiomics_sdist(ctx.workdir / "sdist"), f"{tag}-001"), "lung1 512x512x48"
    entry = write_case(case, ctx.workdir / tag, seed=seed)
    dicomweb.store(read_dicom_dir(entry["ct_dir"]) + read_dicom_dir(entry["seg_file"]))
    settings = flow.load_settings()

    # pyradiomics execute alone, on the same volumes
    ex = featureextractor.RadiomicsFeatureExtractor(settings)
    ex.execute(case.image, case.masks[1], label=1)  # warm-up (imports, C extension)
    t = time.perf_counter()
    ex.execute(case.image, case.masks[1], label=1)
    t_exec = time.perf_counter() - t

    t = time.perf_counter()
    out = flow.run_for_series(dicomweb, fhir, [entry["seg_series_uid"]])
    t_whole = time.perf_counter() - t
    tm = out.timings
    rows = [
        Row("radiomics", f"{what}: pyradiomics execute alone", t_exec, "s"),
        Row("radiomics", f"{what}: whole step (fetch+decode+extract+map+write)", t_whole, "s", t_whole / t_exec,
            "execute alone", f"overhead {100 * (t_whole - t_exec) / t_exec:.0f}% (goal <=20%); "
            f"fetch {tm.get('fetch_s', 0):.2f}s decode {tm.get('decode_s', 0):.2f}s "
            f"map {tm.get('map_s', 0):.2f}s write {tm.get('write_s', 0):.2f}s"),
    ]

    # same volumes as a new SEG (fresh UIDs), written with layout=components (one Observation per group)
    entry2 = write_case(case, ctx.workdir / f"{tag}-c", seed=seed + 1)
    dicomweb.store(read_dicom_dir(entry2["ct_dir"]) + read_dicom_dir(entry2["seg_file"]))
    t = time.perf_counter()
    out2 = flow.run_for_series(dicomweb, fhir, [entry2["seg_series_uid"]], layout="components")
    t_whole2 = time.perf_counter() - t
    rows.append(Row("radiomics", f"{what}: whole step, layout=components", t_whole2, "s", t_whole2 / t_exec,
                    "execute alone", f"overhead {100 * (t_whole2 - t_exec) / t_exec:.0f}%; "
                    f"write {out2.timings.get('write_s', 0):.2f}s, {out2.resources} resources"))

    # all image types: features, Bundle size, write time
    all_settings = flow.resolve_settings(preset="all_image_types")
    res = flow.compute_from_files(entry["ct_dir"], entry["seg_file"], all_settings)
    entries, mapped = flow.entries_for(res.run, fhir=fhir)
    size = len(json.dumps(transaction(entries, sort=False), separators=(",", ":")))
    t = time.perf_counter()
    fhir.write_entries(entries)
    t_write = time.perf_counter() - t
    rows += [
        Row("radiomics", f"{what}: all image types extract", res.timings["execute_s"], "s",
            note=f"{res.feature_count} features, {len(res.computed_image_types)} image types, "
                 f"skipped {res.skipped_image_types or 'none'}"),
        Row("radiomics", f"{what}: all image types Bundle", size / 1e6, "MB", note=f"{len(entries)} entries"),
        Row("radiomics", f"{what}: all image types FHIR write", len(entries) / t_write, "resources/s",
            note=f"{t_write:.1f}s in {-(-len(entries) // 500)} transactions"),
    ]
    return rows
