"""Hostile radiomics results and settings through the real CLI (issue #15): each ends with exit code 1 and one
clear message naming the file (row / field) and the rule, in bounded time and memory; never a traceback, a hang
or a silently wrong value. No servers: ``--out`` writes a Bundle file, and nothing is written on error."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kaapana_fhir.exceptions import ConfigError
from kaapana_fhir.flows.radiomics.flow import load_settings
from tests.reliability import outcomes
from tests.reliability.helpers import refused_within
from tests.reliability.test_limits import ALIAS_BOMB

pytestmark = pytest.mark.reliability

REPO = Path(__file__).resolve().parents[2]
OK = {"original_firstorder_Mean": 41.5, "original_shape_Elongation": 0.75, "diagnostics_Mask-original_VoxelNum": 812}
HEADER = "Image,Mask,Label,diagnostics_Mask-original_VoxelNum,original_firstorder_Mean,original_shape_Elongation\n"


def _cli(result: Path, out: Path, timeout: float = 60) -> tuple[subprocess.CompletedProcess[str], float, int]:
    """radiomics-to-fhir in its own process: (result, seconds, peak RSS of that process in KiB, from GNU time;
    0 when /usr/bin/time is missing)."""
    t0 = time.perf_counter()
    rss_file = out.with_suffix(".rss")
    timer = ["/usr/bin/time", "-f", "%M", "-o", str(rss_file)] if Path("/usr/bin/time").exists() else []
    res = subprocess.run([*timer, sys.executable, "-m", "kaapana_fhir.cli.main", "radiomics-to-fhir", str(result),
                          "--study", "1.2.3", "--seg-series", "1.2.3.4", "--patient-id", "P-hostile", "--out",
                          str(out)], capture_output=True, text=True, timeout=timeout, cwd=REPO)
    peak = int(rss_file.read_text().split()[-1]) if timer and rss_file.exists() else 0
    return res, time.perf_counter() - t0, peak


CASES: dict[str, tuple[str, bytes, str]] = {
    # name: (file name, content, expected text in the message: the rule / field)
    "json 100k deep": ("deep.json", b"[" * 100_000 + b"]" * 100_000, "nesting"),
    "int 400 digits": ("i400.json", b'{"original_firstorder_Mean": ' + b"9" * 400 + b"}", "digits"),
    "int 5000 digits": ("i5000.json", b'{"original_firstorder_Mean": ' + b"9" * 5000 + b"}", "digits"),
    "1e309 value json": ("e309.json", b'{"original_firstorder_Mean": 1e309}', "finite"),
    "Infinity value json": ("inf.json", b'{"original_firstorder_Mean": Infinity}', "Infinity"),
    "inf voxels json": ("vinf.json", b'{"original_firstorder_Mean": 1, "diagnostics_Mask-original_VoxelNum": 1e309}',
                        "finite numbers"),
    "-1 voxels json": ("vneg.json", b'{"original_firstorder_Mean": 1, "diagnostics_Mask-original_VoxelNum": -1}',
                       "diagnostics_Mask-original_VoxelNum"),
    "true value json": ("true.json", b'{"original_firstorder_Mean": true, "original_shape_Elongation": 0.5}',
                        "original_firstorder_Mean"),
    "true voxels json": ("vtrue.json", b'{"original_firstorder_Mean": 1, "diagnostics_Mask-original_VoxelNum": true}',
                         "diagnostics_Mask-original_VoxelNum"),
    "inf value csv": ("inf.csv", (HEADER + "a.nrrd,m.nrrd,1,10,inf,0.5\n").encode(), "row 2 field original_firstorder"),
    "1e309 value csv": ("e309.csv", (HEADER + "a.nrrd,m.nrrd,1,10,1e309,0.5\n").encode(), "row 2 field"),
    "inf voxels csv": ("vinf.csv", (HEADER + "a.nrrd,m.nrrd,1,inf,1.5,0.5\n").encode(),
                       "row 2 field diagnostics_Mask-original_VoxelNum"),
    "5000 digits csv": ("d.csv", (HEADER + "a.nrrd,m.nrrd,1,10," + "9" * 5000 + ",0.5\n").encode(), "row 2 field"),
    "batch csv 3 cases": ("batch.csv", (HEADER + "".join(f"case{i}.nrrd,case{i}_mask.nrrd,1,10,{i}.5,0.5\n"
                                                         for i in range(3))).encode(), "several cases"),
    "batch json 2 cases": ("batch.json", json.dumps([dict(OK, Image="a.nrrd", Mask="am.nrrd", Label=1),
                                                     dict(OK, Image="b.nrrd", Mask="bm.nrrd", Label=1)]).encode(),
                           "several cases"),
    "xml entity bomb": ("bomb.xml", b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
                        b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><l>&b;</l>', "DOCTYPE"),
    "too many features": ("many.json", json.dumps({f"original_firstorder_F{i}": 1.0 for i in range(30_000)}).encode(),
                          "at most 25000 feature values"),
    "not utf-8": ("latin.csv", HEADER.encode() + b"\xe4\xf6.nrrd,m.nrrd,1,10,1.5,0.5\n", "UTF-8"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_radiomics_result_is_refused_clearly(tmp_path: Path, case: str) -> None:
    name, content, expect = CASES[case]
    f = tmp_path / name
    f.write_bytes(content)
    out = tmp_path / "bundle.json"
    res, seconds, peak_kib = _cli(f, out)
    assert res.returncode == 1, (case, res.returncode, res.stdout, res.stderr[-2000:])
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    assert name in res.stderr and expect in res.stderr, res.stderr[-1500:]
    assert not out.exists() and res.stdout == ""  # nothing written, nothing counted
    assert seconds < 30 and peak_kib < 400_000, (seconds, peak_kib)
    outcomes.record("input")
    outcomes.record("clear_error")


def test_27_mb_result_is_refused_before_reading(tmp_path: Path) -> None:
    f = tmp_path / "huge.json"
    with f.open("w") as fh:  # ~27 MB, a million features
        fh.write("{" + ",".join(f'"original_firstorder_F{i}": 1.25' for i in range(1_000_000)) + "}")
    assert f.stat().st_size > 27_000_000
    res, seconds, peak_kib = _cli(f, tmp_path / "b.json")
    assert res.returncode == 1 and "huge.json" in res.stderr and "at most 16777216 bytes" in res.stderr
    assert seconds < 30 and peak_kib < 400_000
    outcomes.record("clear_error")


def test_valid_result_still_maps(tmp_path: Path) -> None:
    """The limits do not refuse real results: NaN stays allowed (dataAbsentReason), several segments map."""
    f = tmp_path / "ok.csv"
    f.write_text(HEADER + "a.nrrd,m--1--liver.nrrd,1,812,41.5,nan\na.nrrd,m--2--tumor.nrrd,2,20,12.5,0.25\n")
    out = tmp_path / "bundle.json"
    res, _, _ = _cli(f, out)
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads(res.stdout)
    assert summary["groups"] == 2 and summary["features"] == 4 and summary["absent"] == 1


@pytest.mark.parametrize(("text", "expect"), [
    (ALIAS_BOMB, "no YAML aliases"),
    ("setting: &s {binWidth: 25}\nvoxelSetting: *s\n", "no YAML aliases"),
    ("yes: true\nsetting: {binWidth: 25}\n", "unknown top-level key(s) ['yes']"),
    ("setting: {binWidth: 25\n", "well-formed YAML"),
    ("setting:\n" + "  " * 1 + "a: " + "[" * 5000 + "]" * 5000 + "\n", "nesting"),
])
def test_hostile_settings_are_config_errors(tmp_path: Path, text: str, expect: str) -> None:
    p = tmp_path / "settings.yaml"
    p.write_text(text)
    with refused_within(ConfigError) as exc:
        load_settings(p)
    assert "settings.yaml" in str(exc.value) and expect in str(exc.value), str(exc.value)
    with pytest.raises(ConfigError) as exc2:
        load_settings(None, text)  # the same text as a workflow-form override
    assert "settings override" in str(exc2.value)
    outcomes.record("input", 2)
    outcomes.record("clear_error", 2)


@pytest.mark.parametrize(("args", "expect"), [
    (["--out", "{d}/series.csv"], "series table"),
    (["--out", "{d}/studies.parquet"], "studies table"),
    (["--out", "{d}/c.csv", "--dataset", "{d}/series.csv"], "--dataset"),
    (["--out", "{d}/c.csv", "--dataset", "{d}/view.json", "--view", "{d}/view.json"], "input --view"),
])
def test_cohort_outputs_never_overwrite_each_other_or_an_input(tmp_path: Path, args: list[str], expect: str) -> None:
    view = tmp_path / "view.json"
    view.write_text('{"resourceType": "ViewDefinition", "name": "v", "resource": "Patient", "select": []}')
    res = subprocess.run([sys.executable, "-m", "kaapana_fhir.cli.main", "cohort", "--fhir", "http://127.0.0.1:9/fhir",
                          *[a.format(d=tmp_path) for a in args]], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert res.returncode == 1 and "would overwrite" in res.stderr and expect in res.stderr, res.stderr[-2000:]
    assert view.read_text().startswith('{"resourceType": "ViewDefinition"')
    assert sorted(p.name for p in tmp_path.iterdir()) == ["view.json"]  # nothing written
    outcomes.record("clear_error")
