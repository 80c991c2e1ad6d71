"""Backfill (QIDO paging, resumable cursor), request economy, a PACS that ignores includefield, repeated CLI
options and non-DICOM files, against in-memory fakes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from kaapana_fhir.core.dicom.mapping import MappingOptions
from kaapana_fhir.exceptions import ConfigError
from kaapana_fhir.flows.dicom_to_fhir import flow
from tests.support.dicom_json import file_dataset, series_json
from tests.unit.flows.dicom_to_fhir.test_flow import FakeFhir

BASE = "1.2.826.0.1.3680043.8.498.900"
#: what a PACS returns at series level when it ignores includefield (PS3.18 default return keys)
DEFAULT_KEYS = ("00080005", "00080060", "0008103E", "0020000E", "00200011", "00201209", "0020000D")


class PagingPacs:
    """Fake PACS: studies of ``n`` patients, each a CT + an RTSTRUCT with empty sex (listed first)."""

    def __init__(self, n: int, *, cap: int | None = None, ignore_includefield: bool = False) -> None:
        self.url = "http://pacs.example/dicom-web"
        self.wado_rs_base = self.url
        self.cap, self.ignore = cap, ignore_includefield
        self.calls: list[str] = []
        self.series: dict[str, list[dict[str, Any]]] = {}
        for i in range(n):
            study = f"{BASE}.{i + 1}"
            date = f"2020{1 + i % 12:02d}15"
            rt = series_json(study=study, series=f"{study}.1", SeriesNumber="1", Modality="RTSTRUCT",
                             PatientID=f"P{i}", PatientSex=None, StudyDate=date, BodyPartExamined=None)
            ct = series_json(study=study, series=f"{study}.2", SeriesNumber="2", Modality="CT", PatientID=f"P{i}",
                             PatientSex="F" if i % 2 else "M", StudyDate=date, KVP="120")
            self.series[study] = [rt, ct]

    def search_studies(self, filters: dict[str, Any], *, fields: Any = ()) -> list[dict[str, Any]]:
        self.calls.append("studies")
        limit, offset = int(filters["limit"]), int(filters["offset"])
        lo, _, hi = str(filters.get("StudyDate", "-")).partition("-")
        recs = []
        for study, series in self.series.items():
            d = series[0]["00080020"]["Value"][0]
            if (lo and d < lo) or (hi and d > hi):
                continue
            mods = sorted({s["00080060"]["Value"][0] for s in series})
            if filters.get("ModalitiesInStudy") and filters["ModalitiesInStudy"] not in mods:
                continue
            recs.append({"0020000D": {"vr": "UI", "Value": [study]}, "00080061": {"vr": "CS", "Value": mods}})
        return recs[offset: offset + min(limit, self.cap or limit)]

    def search_series(self, study: str, **_kw: Any) -> list[dict[str, Any]]:
        self.calls.append("series")
        out = self.series.get(study, [])
        if self.ignore:
            return [{k: v for k, v in s.items() if k in DEFAULT_KEYS} for s in out]
        return out

    def search_instances(self, study: str, series: str, **_kw: Any) -> list[dict[str, Any]]:
        self.calls.append("instances")
        return [{"00080018": {"vr": "UI", "Value": [series + ".1"]}}]

    def instance_metadata(self, study: str, series: str, sop: str) -> dict[str, Any]:
        self.calls.append("metadata")
        return next(s for s in self.series[study] if s["0020000E"]["Value"][0] == series)


def test_paging_with_a_short_last_page_lists_every_study_once() -> None:
    pacs = PagingPacs(7)
    recs = list(flow.list_studies(pacs, page_size=3))
    assert len(recs) == 7 == len({r["0020000D"]["Value"][0] for r in recs})
    assert pacs.calls == ["studies"] * 4  # 3 + 3 + 1 (short) + 1 confirming the end


def test_paging_survives_a_pacs_that_caps_pages_below_the_limit() -> None:
    pacs = PagingPacs(7, cap=2)
    assert len(list(flow.list_studies(pacs, page_size=5))) == 7


def test_window_and_modality_filters() -> None:
    pacs = PagingPacs(12)
    recs = list(flow.list_studies(pacs, since="2020-03-01", until="2020-05-31", modalities=["CT", "MR"]))
    assert len(recs) == 3  # March, April, May; each once although listed for CT only
    with pytest.raises(ConfigError, match="after"):
        list(flow.list_studies(pacs, since="2021-01-01", until="2020-01-01"))
    with pytest.raises(ConfigError, match="not a date"):
        list(flow.list_studies(pacs, since="yesterday"))


def test_one_qido_request_per_study_and_demographics_from_every_series() -> None:
    pacs, fhir = PagingPacs(3), FakeFhir()
    res = flow.sync_studies(pacs, fhir, study_uids=[f"{BASE}.{i}" for i in (1, 2, 3)], workers=2)
    assert res["pacs_requests"] == 3 and pacs.calls == ["series"] * 3
    genders = {fhir.current("Patient", pid).get("gender") for pid in res["patient_ids"]}
    assert genders == {"male", "female"}  # the RTSTRUCT listed first has no sex; the CT's is used


def test_a_pacs_that_ignores_includefield_gets_metadata_per_series() -> None:
    pacs = PagingPacs(1, ignore_includefield=True)
    res = flow.sync_studies(pacs, None, study_uids=[f"{BASE}.1"])
    assert pacs.calls.count("metadata") == 2
    patient = next(e["resource"] for e in res["bundle"]["entry"] if e["resource"]["resourceType"] == "Patient")
    assert patient["gender"] == "male" and patient["identifier"][0]["value"] == "P0"


def test_backfill_resumes_from_the_cursor_and_writes_nothing_twice(tmp_path: Path) -> None:
    pacs, fhir = PagingPacs(9), FakeFhir()
    cursor = tmp_path / "backfill.cursor"
    seen: list[dict[str, Any]] = []

    def stop_after_first_batch(info: dict[str, Any]) -> None:
        seen.append(info)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        flow.backfill(pacs, fhir, cursor=cursor, batch_size=4, progress=stop_after_first_batch, workers=1)
    assert seen[0]["done"] == 4 and seen[0]["total"] == 9 and seen[0]["eta"] != "?"
    pacs.calls.clear()
    res = flow.backfill(pacs, fhir, cursor=cursor, batch_size=4, workers=1)
    assert res["already_done"] == 4 and res["studies"] == 5
    assert pacs.calls.count("series") == 5  # the 4 written studies are not read again
    again = flow.backfill(pacs, fhir, cursor=cursor, batch_size=4)
    assert again["studies"] == 0 and again["already_done"] == 9
    assert len(cursor.read_text().splitlines()) == 1 + 9
    with pytest.raises(ConfigError, match="another backfill"):
        flow.backfill(pacs, fhir, cursor=cursor, since="2020-01-01")


def _cli(argv: list[str]) -> argparse.Namespace:
    from kaapana_fhir.cli import dicom_cmd

    parser = argparse.ArgumentParser()
    dicom_cmd.register(parser.add_subparsers())
    return parser.parse_args(["dicom-to-fhir", *argv])


def test_repeated_cli_options_accumulate() -> None:
    from kaapana_fhir.cli.dicom_cmd import modalities

    ns = _cli(["--dicomweb", "http://x", "--study", "1.2", "--study", "1.3", "1.4", "--series", "1.5",
               "--series", "1.6", "--modality", "CT,mr", "--modality", "PT", "--issuer-system", "a=b",
               "--issuer-system", "c=d", "--out", "x.json"])
    assert ns.study == ["1.2", "1.3", "1.4"] and ns.series == ["1.5", "1.6"]
    assert modalities(ns.modality) == ["CT", "MR", "PT"] and ns.issuer_system == ["a=b", "c=d"]
    assert _cli(["--files", "a", "--files", "b", "c", "--out", "x"]).files == ["a", "b", "c"]


def _dicom(path: Path, study: str) -> None:
    ds = file_dataset("1.2.840.10008.5.1.4.1.1.2")
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.PatientID, ds.Modality = study, study + ".1", "F-1", "CT"
    ds.PatientName, ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "F^1", "20200101", "1000", "1", ""
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.save_as(path, enforce_file_format=True)


def test_non_dicom_files_are_skipped_as_issues_and_strict_fails(tmp_path: Path) -> None:
    from pydicom.fileset import FileSet

    from kaapana_fhir.cli.main import main

    _dicom(tmp_path / "a.dcm", "1.2.3.77")
    (tmp_path / "README").write_text("collection notes")
    (tmp_path / "manifest.json").write_text(json.dumps({"files": 1}))
    fs = FileSet()
    fs.add(str(tmp_path / "a.dcm"))
    fs.write(tmp_path / "media")  # writes media/DICOMDIR (+ a copy of a.dcm)
    res = flow.sync_files([tmp_path], None, options=MappingOptions())
    names = sorted(Path(p).name for p in res["skipped_files"])
    assert names == ["DICOMDIR", "README", "manifest.json"]
    assert {i["tag"] for i in res["issues"] if i.get("source") in res["skipped_files"]} == {"file"}
    assert res["studies"] == 1 and not res["failed"]
    out = tmp_path.parent / "out.json"
    assert main(["dicom-to-fhir", "--files", str(tmp_path), "--out", str(out)]) == 0
    assert main(["dicom-to-fhir", "--files", str(tmp_path), "--out", str(out), "--strict"]) == 1


def test_date_windows_for_the_dag_fan_out() -> None:
    w = flow.date_windows("2020-01-01", "2020-03-10", 30)
    assert w == [{"since": "2020-01-01", "until": "2020-01-30"}, {"since": "2020-01-31", "until": "2020-02-29"},
                 {"since": "2020-03-01", "until": "2020-03-10"}]
    assert flow.date_windows("20200101", "20200101", 7) == [{"since": "2020-01-01", "until": "2020-01-01"}]
    with pytest.raises(ConfigError):
        flow.date_windows("2020-02-01", "2020-01-01", 7)
    with pytest.raises(ConfigError):
        flow.date_windows("2020-01-01", "2020-02-01", 0)


def test_every_multi_value_option_of_the_cli_accumulates_when_repeated() -> None:
    """An option that takes several values (nargs +/*) must use action append/extend: with the plain store
    action, ``--study A --study B`` silently keeps only B."""
    from kaapana_fhir.cli.main import build_parser

    parser = build_parser()
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    offending = []
    checked = 0
    for sub in subs:
        for name, p in sub.choices.items():
            for action in p._actions:
                if action.option_strings and action.nargs in ("+", "*"):
                    checked += 1
                    if not isinstance(action, (argparse._AppendAction, argparse._ExtendAction)):
                        offending.append(f"{name} {action.option_strings[0]}")
    assert checked >= 3 and offending == []
