"""Backfill (QIDO paging, resumable cursor), request economy, a PACS that ignores includefield, repeated CLI
options and non-DICOM files, against in-memory fakes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from kaapana_fhir.core.dicom.mapping import MappingOptions
from kaapana_fhir.exceptions import ConfigError, DicomWebError
from kaapana_fhir.flows.dicom_to_fhir import flow
from tests.support.dicom_json import file_dataset, series_json
from tests.unit.flows.dicom_to_fhir.test_flow import FakeFhir

BASE = "1.2.826.0.1.3680043.8.498.900"
#: what a PACS returns at series level when it ignores includefield (PS3.18 default return keys)
DEFAULT_KEYS = ("00080005", "00080060", "0008103E", "0020000E", "00200011", "00201209", "0020000D")


class PagingPacs:
    """Fake PACS: studies of ``n`` patients, each a CT + an RTSTRUCT with empty sex (listed first).

    The series listing without a study (``search_series(None, {...})``) lists every RTSTRUCT first, then every
    CT, as a PACS does that indexed them in that order: no study is complete before the second half."""

    def __init__(self, n: int, *, cap: int | None = None, ignore_includefield: bool = False,
                 listing: str = "ok", counts: bool = True) -> None:
        self.url = "http://pacs.example/dicom-web"
        self.wado_rs_base = self.url
        self.cap, self.ignore, self.listing, self.counts = cap, ignore_includefield, listing, counts
        self.calls: list[str] = []
        self.asked: list[str] = []  # studies whose series were searched (alone or in a UID list)
        self.series: dict[str, list[dict[str, Any]]] = {}
        for i in range(n):
            study = f"{BASE}.{i + 1}"
            date = f"2020{1 + i % 12:02d}15"
            rt = series_json(study=study, series=f"{study}.1", SeriesNumber="1", Modality="RTSTRUCT",
                             PatientID=f"P{i}", PatientSex=None, StudyDate=date, BodyPartExamined=None)
            ct = series_json(study=study, series=f"{study}.2", SeriesNumber="2", Modality="CT", PatientID=f"P{i}",
                             PatientSex="F" if i % 2 else "M", StudyDate=date, KVP="120")
            self.series[study] = [rt, ct]

    @staticmethod
    def _in_window(filters: dict[str, Any], day: str) -> bool:
        lo, _, hi = str(filters.get("StudyDate", "-")).partition("-")
        return not ((lo and day < lo) or (hi and day > hi))

    def _page(self, recs: list[dict[str, Any]], filters: dict[str, Any]) -> list[dict[str, Any]]:
        limit, offset = int(filters["limit"]), int(filters["offset"])
        return recs[offset: offset + min(limit, self.cap or limit)]

    def search_studies(self, filters: dict[str, Any], *, fields: Any = ()) -> list[dict[str, Any]]:
        self.calls.append("studies")
        recs = []
        for study, series in self.series.items():
            if not self._in_window(filters, series[0]["00080020"]["Value"][0]):
                continue
            mods = sorted({s["00080060"]["Value"][0] for s in series})
            if filters.get("ModalitiesInStudy") and filters["ModalitiesInStudy"] not in mods:
                continue
            rec = {"0020000D": {"vr": "UI", "Value": [study]}, "00080061": {"vr": "CS", "Value": mods}}
            if self.counts:
                rec["00201206"] = {"vr": "IS", "Value": [len(series)]}
            recs.append(rec)
        return self._page(recs, filters)

    def _maybe_ignore(self, recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.ignore:
            return [{k: v for k, v in s.items() if k in DEFAULT_KEYS} for s in recs]
        return recs

    def search_series(self, study: str | None, filters: dict[str, Any] | None = None,
                      **_kw: Any) -> list[dict[str, Any]]:
        if study is None:
            group = (filters or {}).get("StudyInstanceUID")
            self.calls.append("series-group" if group else "series-listing")
            if self.listing == "refuse":
                raise DicomWebError(f"DICOMweb QIDO-RS series at {self.url} failed with HTTP 400")
            if self.listing == "empty":
                return []
            if group:  # UID list matching
                if not filters or not filters.get("offset"):
                    self.asked.extend(str(group).split(","))
                listed = [s for u in str(group).split(",") for s in self.series.get(u, [])]
                return self._page(self._maybe_ignore(listed), filters or {})
            in_window = [s for s in self.series.values()
                         if self._in_window(filters or {}, s[0]["00080020"]["Value"][0])]
            ordered = [s[0] for s in in_window] + [s[1] for s in in_window]
            return self._page(self._maybe_ignore(ordered), filters or {})
        self.calls.append("series")
        self.asked.append(study)
        return self._maybe_ignore(self.series.get(study, []))

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
    res = flow.sync_studies(pacs, fhir, study_uids=[f"{BASE}.{i}" for i in (1, 2, 3)], workers=2, group_size=1)
    assert res.pacs_requests == 3 and pacs.calls == ["series"] * 3
    genders = {fhir.current("Patient", pid).get("gender") for pid in res.patient_ids}
    assert genders == {"male", "female"}  # the RTSTRUCT listed first has no sex; the CT's is used


def test_a_study_list_is_read_twenty_studies_a_request() -> None:
    """--study with 45 studies: 3 series searches with UID list matching (20 + 20 + 5 studies), each confirmed by
    one more (empty) page, instead of 45 searches; the same resources as one search per study."""
    pacs, fhir = PagingPacs(45), FakeFhir()
    uids = [f"{BASE}.{i}" for i in range(1, 46)]
    res = flow.sync_studies(pacs, fhir, study_uids=uids)
    assert res.studies == 45 and not res.failed and "series" not in pacs.calls
    assert res.pacs_requests == pacs.calls.count("series-group") == 6
    one_by_one = FakeFhir()
    flow.sync_studies(PagingPacs(45), one_by_one, study_uids=uids, group_size=1)
    assert {k: v[-1] for k, v in fhir.store.items()} == {k: v[-1] for k, v in one_by_one.store.items()}


@pytest.mark.parametrize(("counts", "cap", "requests"), [(True, None, 3), (False, None, 6), (True, 3, 32),
                                                        (False, 3, 35)])
def test_backfill_groups_skip_the_confirming_page_when_series_counts_show_every_study(
        counts: bool, cap: int | None, requests: int) -> None:
    """45 studies in 3 groups (20 + 20 + 5 studies, 40 + 40 + 10 series). With NumberOfStudyRelatedSeries from the
    study listing, a short page that completes every study is the last one; without, one more (empty) page
    confirms the end. A PACS capping pages at 3 series is paged on until the counts are reached: 14 + 14 + 4."""
    pacs = PagingPacs(45, counts=counts, cap=cap)
    res = flow.backfill(pacs, FakeFhir(), batch_size=100, workers=1)
    assert res.studies == 45 and not res.failed and "series" not in pacs.calls
    assert pacs.calls.count("series-group") == requests


def test_uid_list_answers_capped_below_the_limit_are_paged_on() -> None:
    pacs = PagingPacs(5, cap=3)
    got = flow.read_study_group(pacs, [f"{BASE}.{i}" for i in range(1, 6)], page_size=100)
    assert sorted(got) == [f"{BASE}.{i}" for i in range(1, 6)] and all(len(v) == 2 for v in got.values())
    assert pacs.calls.count("series-group") == 5  # 10 series in pages of 3 (capped), then the empty page


def test_a_pacs_that_ignores_uid_list_matching_is_read_study_by_study() -> None:
    pacs = PagingPacs(3)

    def everything(study: str | None, filters: dict[str, Any] | None = None, **kw: Any) -> list[dict[str, Any]]:
        if study is None:  # answers the whole PACS, as if the StudyInstanceUID list were not there
            pacs.calls.append("series-group")
            return [] if (filters or {}).get("offset") else [s for ss in pacs.series.values() for s in ss]
        return PagingPacs.search_series(pacs, study, filters, **kw)

    pacs.search_series = everything  # type: ignore[method-assign]
    res = flow.sync_studies(pacs, FakeFhir(), study_uids=[f"{BASE}.1", f"{BASE}.2"], workers=1)
    assert res.studies == 2 and pacs.calls.count("series-group") == 1 and pacs.calls.count("series") == 2


def test_a_pacs_that_ignores_includefield_gets_metadata_per_series() -> None:
    pacs = PagingPacs(1, ignore_includefield=True)
    res = flow.sync_studies(pacs, None, study_uids=[f"{BASE}.1"])
    assert pacs.calls.count("metadata") == 2
    patient = next(e["resource"] for e in res.bundle["entry"] if e["resource"]["resourceType"] == "Patient")
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
    pacs.asked.clear()
    res = flow.backfill(pacs, fhir, cursor=cursor, batch_size=4, workers=1)
    assert res.already_done == 4 and res.studies == 5
    assert list(res.as_dict()) == ["studies", "series", "study_uids", "imaging_study_ids", "patient_ids",
                                   "observations", "resources", "conflict_retries", "failed", "issues",
                                   "issue_count", "skipped_files", "pacs_requests", "listed", "already_done",
                                   "batches", "read_per_study", "timings"]
    assert list(res.as_dict()["timings"]) == ["dicomweb_s", "mapping_s", "fhir_s", "listing_s"]
    assert sorted(pacs.asked) == sorted(f"{BASE}.{i}" for i in range(5, 10))  # the 4 written ones not again
    again = flow.backfill(pacs, fhir, cursor=cursor, batch_size=4)
    assert again.studies == 0 and again.already_done == 9
    assert len(cursor.read_text().splitlines()) == 1 + 9
    with pytest.raises(ConfigError, match="another backfill"):
        flow.backfill(pacs, fhir, cursor=cursor, since="2020-01-01")


def _listing(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """A backfill with the window's series listing (one paged series-level QIDO without a study)."""
    return flow.backfill(*args, series_listing=True, **kwargs)


def _genders(fhir: FakeFhir, res: dict[str, Any]) -> dict[str, str | None]:
    return {pid: fhir.current("Patient", pid).get("gender") for pid in res.patient_ids}


def test_backfill_lists_series_in_pages_instead_of_one_search_per_study() -> None:
    """9 studies, 18 series, 4 series per page (a short last page, then the empty page that ends it); every
    RTSTRUCT (no sex) is listed before every CT, so studies complete only in later pages."""
    pacs, fhir = PagingPacs(9), FakeFhir()
    res = _listing(pacs, fhir, batch_size=3, series_page_size=4, workers=1, listing_concurrency=1)
    assert res.studies == 9 and not res.failed and res.read_per_study == 0
    assert pacs.calls.count("series-listing") == 6 and "series" not in pacs.calls  # 4+4+4+4+2, then empty
    assert res.pacs_requests == 2 + 6  # study listing (9, then empty) + series listing: < 1 per study
    assert set(_genders(fhir, res).values()) == {"male", "female"}  # from the CT listed after the RTSTRUCT
    assert all(len(fhir.current("ImagingStudy", i)["series"]) == 2 for i in res.imaging_study_ids)


def test_a_study_is_written_as_soon_as_all_its_series_are_listed() -> None:
    """20 studies, 2 series per page: 20 RTSTRUCT pages... the first studies are complete in page 11 and written
    while the listing goes on (the count from NumberOfStudyRelatedSeries), not after its last page (21)."""
    pacs = PagingPacs(20)
    at_first_progress: list[int] = []
    res = _listing(pacs, FakeFhir(), batch_size=2, series_page_size=2, workers=1, listing_concurrency=1,
                        progress=lambda info: at_first_progress.append(pacs.calls.count("series-listing")))
    assert res.studies == 20 and pacs.calls.count("series-listing") == 21
    assert at_first_progress[0] < 18  # at most a few pages read ahead


def test_series_listing_gives_the_same_resources_as_per_study_reads() -> None:
    listed, per_study = FakeFhir(), FakeFhir()
    _listing(PagingPacs(5), listed, series_page_size=3)
    flow.backfill(PagingPacs(5), per_study, group_size=1)
    assert {k: v[-1] for k, v in listed.store.items()} == {k: v[-1] for k, v in per_study.store.items()}


def test_series_listing_survives_pages_capped_below_the_limit() -> None:
    pacs = PagingPacs(7, cap=3)
    res = _listing(pacs, FakeFhir(), series_page_size=100, listing_concurrency=1)
    assert res.studies == 7 and res.read_per_study == 0
    assert pacs.calls.count("series-listing") == 6  # 14 series in pages of 3 (capped), then empty


@pytest.mark.parametrize("cap", [None, 3, 4, 5])
def test_concurrent_listing_pages_lose_and_repeat_nothing(cap: int | None) -> None:
    """Pages asked for at once; a PACS that caps pages below the limit makes the later offsets wrong, so they
    are dropped and asked again: every series listed exactly once, in order."""
    pacs = PagingPacs(11, cap=cap)
    pages = list(flow.list_series(pacs, page_size=4, concurrency=3))
    listed = [r["0020000E"]["Value"][0] for page in pages for r in page]
    expected = [s[0]["0020000E"]["Value"][0] for s in pacs.series.values()] + \
        [s[1]["0020000E"]["Value"][0] for s in pacs.series.values()]
    assert listed == expected
    res = _listing(pacs, FakeFhir(), series_page_size=4, listing_concurrency=3)
    assert res.studies == 11 and res.read_per_study == 0


@pytest.mark.parametrize("listing", ["refuse", "empty"])
def test_a_pacs_without_series_listing_is_read_study_by_study(listing: str) -> None:
    pacs, fhir = PagingPacs(4, listing=listing), FakeFhir()
    res = _listing(pacs, fhir, workers=1, listing_concurrency=1)
    assert res.studies == 4 and not res.failed and res.read_per_study == 4
    assert pacs.calls.count("series-listing") == 1 and pacs.calls.count("series") == 4
    assert pacs.calls.count("series-group") == 1  # the 4 asked for at once first, refused/empty too


def test_series_listing_that_ignores_includefield_reads_metadata_per_series() -> None:
    pacs, fhir = PagingPacs(2, ignore_includefield=True), FakeFhir()
    res = _listing(pacs, fhir, workers=1)
    assert res.studies == 2 and res.read_per_study == 0 and pacs.calls.count("metadata") == 4
    assert set(_genders(fhir, res).values()) == {"male", "female"}


def test_without_series_counts_studies_complete_at_the_end_of_the_listing() -> None:
    pacs = PagingPacs(4, counts=False)
    res = _listing(pacs, FakeFhir(), series_page_size=3)
    assert res.studies == 4 and res.read_per_study == 0 and res.batches == 1


def test_a_study_listed_with_fewer_series_than_its_count_is_read_per_study() -> None:
    pacs = PagingPacs(3)
    late = pacs.series[f"{BASE}.2"]
    late.append(series_json(study=f"{BASE}.2", series=f"{BASE}.2.3", SeriesNumber="3", Modality="SR",
                            PatientID="P1", StudyDate=late[0]["00080020"]["Value"][0]))
    listing = PagingPacs.search_series

    def without_the_sr(self: PagingPacs, study: str | None, filters: dict[str, Any] | None = None,
                       **kw: Any) -> list[dict[str, Any]]:
        out = listing(self, study, filters, **kw)
        return [r for r in out if r["0020000E"]["Value"][0] != f"{BASE}.2.3"] if study is None else out

    pacs.search_series = without_the_sr.__get__(pacs)  # type: ignore[method-assign]
    fhir = FakeFhir()
    res = _listing(pacs, fhir)
    assert res.studies == 3 and res.read_per_study == 1 and pacs.calls.count("series") == 1
    study = next(i for i in res.imaging_study_ids if len(fhir.current("ImagingStudy", i)["series"]) == 3)
    assert study


def test_buffered_series_are_bounded_and_spilled_studies_are_read_per_study() -> None:
    """RTSTRUCTs of all 6 studies come first; holding at most 2 series, the oldest waiting studies are dropped
    from the buffer and read per study later; nothing is written twice, nothing lost."""
    pacs, fhir = PagingPacs(6), FakeFhir()
    res = _listing(pacs, fhir, series_page_size=2, max_buffered_series=2, workers=1)
    assert res.studies == 6 and not res.failed and len(set(res.study_uids)) == 6
    assert 0 < res.read_per_study < 6 and len(pacs.asked) == len(set(pacs.asked)) == res.read_per_study
    assert set(_genders(fhir, res).values()) == {"male", "female"}


def test_modality_filter_applies_to_the_series_listing() -> None:
    pacs = PagingPacs(6)
    for i in (1, 3, 5):  # these studies become MR + RTSTRUCT
        pacs.series[f"{BASE}.{i}"][1]["00080060"]["Value"] = ["MR"]
    res = _listing(pacs, FakeFhir(), modalities=["MR"])
    assert sorted(res.study_uids) == [f"{BASE}.{i}" for i in (1, 3, 5)] and res.read_per_study == 0


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
    names = sorted(Path(p).name for p in res.skipped_files)
    assert names == ["DICOMDIR", "README", "manifest.json"]
    assert {i["tag"] for i in res.issues if i.get("source") in res.skipped_files} == {"file"}
    assert res.studies == 1 and not res.failed
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
