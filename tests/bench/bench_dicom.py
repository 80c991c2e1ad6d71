"""dicom-to-fhir bench: pure mapping throughput from DICOM JSON, and end-to-end Orthanc → HAPI with a time split.

Rows:
* pure mapping of S studies × 5 series (QIDO-like DICOM JSON) → studies/s (map only, and map + R4B validation);
* end-to-end for N studies (2 series × 2 instances each): wall time split into QIDO/WADO, mapping and FHIR
  writes, and the share of wall time spent in our own code (wall − time inside HTTP requests of both clients).
* optional: the same headers through PyPI ``dicom2fhir`` 0.1.25 in its own venv (it needs fhir.resources 8.2.0):
  set ``DICOM2FHIR_PYTHON`` to that venv's python (default ``/tmp/d2f-venv/bin/python`` if it exists), e.g.
  ``python -m venv /tmp/d2f-venv && /tmp/d2f-venv/bin/pip install dicom2fhir==0.1.25 fhir.resources==8.2.0``.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import requests

from kaapana_fhir.clients.dicomweb import DicomWeb
from kaapana_fhir.clients.fhir import FhirClient
from kaapana_fhir.core.dicom.mapping import MappingOptions, SeriesInput, map_study
from kaapana_fhir.core.validate import validate_resource
from kaapana_fhir.flows.dicom_to_fhir.flow import sync_studies


class _TimedSession(requests.Session):
    """Accumulates the seconds spent inside HTTP requests (incl. reading the body)."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds = 0.0

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        t0 = time.perf_counter()
        try:
            resp = super().request(*args, **kwargs)
            _ = resp.content
            return resp
        finally:
            self.seconds += time.perf_counter() - t0


def _headers(n_studies: int, n_series: int = 5) -> list[list[SeriesInput]]:
    from tests.support.dicom_json import series_json

    out = []
    for i in range(n_studies):
        study = f"1.2.826.0.1.3680043.8.498.77.{i + 1}"
        out.append([SeriesInput(series_json(study=study, series=f"{study}.{j + 1}", SeriesNumber=str(j + 1),
                                            PatientID=f"B-{i % 300}", BodyPartExamined=("CHEST", "Thorax", "ABDOMEN",
                                                                                        "Head", "LIVER")[j],
                                            StudyTime="101010.123", Laterality=("L", "R", "", "B", "U")[j]))
                    for j in range(n_series)])
    return out


_D2F_SCRIPT = """
import asyncio, json, sys, time
from dicom2fhir.dicom2fhir import from_generator

studies = json.load(open(sys.argv[1]))

async def gen(instances):
    for d in instances:
        yield d

async def main():
    ok = failed = 0
    err = ""
    t0 = time.perf_counter()
    for inst in studies:
        try:
            await from_generator(gen(inst), config={"dicom_timezone": "Europe/Berlin"})
            ok += 1
        except Exception as e:
            failed += 1
            err = repr(e)[:300]
    return time.perf_counter() - t0, ok, failed, err

secs, ok, failed, err = asyncio.run(main())
print(json.dumps({"seconds": secs, "ok": ok, "failed": failed, "error": err}))
"""


def _dicom2fhir(studies: list[list[SeriesInput]], workdir: Path) -> dict[str, Any] | None:
    """Time dicom2fhir 0.1.25 on the same headers (one instance per series) in its own venv, if available."""
    py = os.environ.get("DICOM2FHIR_PYTHON") or "/tmp/d2f-venv/bin/python"
    if not Path(py).exists():
        return None
    data = []
    for st in studies:
        inst = []
        for s in st:
            a = dict(s.attrs)
            a["00080018"] = {"vr": "UI", "Value": [a["0020000E"]["Value"][0] + ".1"]}
            a["00080016"] = {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]}
            a["00200013"] = {"vr": "IS", "Value": [1]}
            inst.append(a)
        data.append(inst)
    headers, script = workdir / "d2f_headers.json", workdir / "d2f_run.py"
    headers.write_text(json.dumps(data))
    script.write_text(_D2F_SCRIPT)
    proc = subprocess.run([py, str(script), str(headers)], capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        return {"error": proc.stderr[-300:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(ctx):  # noqa: ANN001, ANN201
    from run import Row

    rows = []
    n_pure = 200 if ctx.quick else 1000
    studies = _headers(n_pure)
    options = MappingOptions(endpoint_address="http://pacs.example/dicom-web", timezone="Europe/Berlin")
    t0 = time.perf_counter()
    mapped = [map_study(s, options) for s in studies]
    t_map = time.perf_counter() - t0
    t0 = time.perf_counter()
    for m in mapped:
        for r in m.resources():
            validate_resource(r)
    t_val = time.perf_counter() - t0
    rows.append(Row("dicom", f"pure mapping {n_pure} studies x 5 series", n_pure / t_map, "studies/s",
                    note=f"{n_pure * 5 / t_map:,.0f} series/s"))
    rows.append(Row("dicom", f"mapping + R4B validation {n_pure} studies", n_pure / (t_map + t_val), "studies/s",
                    ratio=t_val / t_map, ratio_of="validation time / mapping time"))
    d2f = _dicom2fhir(studies, ctx.workdir)
    if d2f is None:
        rows.append(Row("dicom", "dicom2fhir 0.1.25 same headers", float("nan"), "studies/s",
                        note="not run: no DICOM2FHIR_PYTHON venv"))
    elif "error" in d2f and "seconds" not in d2f:
        rows.append(Row("dicom", "dicom2fhir 0.1.25 same headers", float("nan"), "studies/s", note=d2f["error"][:80]))
    else:
        theirs = d2f["ok"] / d2f["seconds"] if d2f["ok"] else float("nan")
        rows.append(Row("dicom", f"dicom2fhir 0.1.25 same headers ({d2f['ok']} ok, {d2f['failed']} failed)", theirs,
                        "studies/s", ratio=(n_pure / t_map) / theirs if d2f["ok"] else None,
                        ratio_of="ours (map only) / dicom2fhir"))
        if d2f["ok"]:
            rows.append(Row("dicom", "ours map + validation vs dicom2fhir", n_pure / (t_map + t_val), "studies/s",
                            ratio=(n_pure / (t_map + t_val)) / theirs, ratio_of="ours (validated) / dicom2fhir",
                            note="dicom2fhir builds pydantic models, i.e. validates too"))

    # end-to-end Orthanc -> HAPI
    from pydicom.uid import generate_uid

    from tests.support.dicom_json import ct_series

    st = ctx.stack()
    n_e2e = 20 if ctx.quick else 200
    tag = uuid.uuid4().hex[:8]
    setup = DicomWeb(st.dicomweb_url)
    study_uids = []
    batch: list[Any] = []
    for i in range(n_e2e):
        study = generate_uid()
        study_uids.append(study)
        pid = f"BENCH-{tag}-{i % max(1, n_e2e // 2)}"
        batch += ct_series(study, generate_uid(), pid, n=2, series_number=1)
        batch += ct_series(study, generate_uid(), pid, n=2, series_number=2, body_part="ABDOMEN")
        if len(batch) >= 80:
            setup.store(batch)
            batch = []
    if batch:
        setup.store(batch)
    dw_session, fhir_session = _TimedSession(), _TimedSession()
    dicomweb = DicomWeb(st.dicomweb_url, session=dw_session)
    fhir = FhirClient(st.fhir_url, session=fhir_session)
    t0 = time.perf_counter()
    result = sync_studies(dicomweb, fhir, study_uids=study_uids)
    wall = time.perf_counter() - t0
    http = dw_session.seconds + fhir_session.seconds
    tm = result["timings"]
    rows.append(Row("dicom", f"end-to-end Orthanc->HAPI {n_e2e} studies (2 series x 2 inst)", n_e2e / wall,
                    "studies/s", note=f"wall {wall:.1f}s"))
    rows.append(Row("dicom", "  QIDO/WADO phase", tm["dicomweb_s"], "s", ratio=tm["dicomweb_s"] / wall,
                    ratio_of="share of wall"))
    rows.append(Row("dicom", "  mapping + validation phase", tm["mapping_s"], "s", ratio=tm["mapping_s"] / wall,
                    ratio_of="share of wall"))
    rows.append(Row("dicom", "  FHIR write phase", tm["fhir_s"], "s", ratio=tm["fhir_s"] / wall,
                    ratio_of="share of wall"))
    rows.append(Row("dicom", "  our code (wall - HTTP time)", wall - http, "s", ratio=(wall - http) / wall,
                    ratio_of="share of wall (goal <= 0.10)",
                    note=f"HTTP: DICOMweb {dw_session.seconds:.1f}s, FHIR {fhir_session.seconds:.1f}s"))
    t0 = time.perf_counter()
    again = sync_studies(DicomWeb(st.dicomweb_url), FhirClient(st.fhir_url), study_uids=study_uids)
    rerun = time.perf_counter() - t0
    rows.append(Row("dicom", f"re-run {n_e2e} studies (no changes)", n_e2e / rerun, "studies/s",
                    note=f"created {again['resources']['created']}, updated {again['resources']['updated']}"))
    return rows
