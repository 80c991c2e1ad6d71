"""Web pieces without servers: KM / log-rank against published numbers, settings and the project macro,
request parsing of the framework-neutral API, and the plugin's import cost."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from kaapana_fhir.web import api, settings, survival

REPO = Path(__file__).resolve().parents[3]

# Freireich et al. (1963) 6-MP vs placebo remission times (weeks), as tabulated in Kleinbaum & Klein,
# "Survival Analysis: A Self-Learning Text": log-rank chi-square 16.79 (1 df); KM of the 6-MP arm below.
MP_T = [6, 6, 6, 7, 10, 13, 16, 22, 23, 6, 9, 10, 11, 17, 19, 20, 25, 32, 32, 34, 35]
MP_E = [1] * 9 + [0] * 12
PL_T = [1, 1, 2, 2, 3, 4, 4, 5, 5, 8, 8, 8, 8, 11, 11, 12, 12, 15, 17, 22, 23]
PL_E = [1] * 21


def test_kaplan_meier_matches_the_textbook_table() -> None:
    km = survival.kaplan_meier(MP_T, MP_E)
    got = dict(zip(km.times, (round(s, 3) for s in km.survival), strict=True))
    assert got[6.0] == 0.857 and got[7.0] == 0.807 and got[10.0] == 0.753 and got[13.0] == 0.690
    assert got[16.0] == 0.627 and got[22.0] == 0.538 and got[23.0] == 0.448
    assert km.n == 21 and km.events == 9 and km.median == 23.0 and km.times[-1] == 35.0
    assert survival.kaplan_meier(PL_T, PL_E).median == 8.0


def test_logrank_matches_the_textbook_statistic() -> None:
    lr = survival.logrank([(MP_T, MP_E), (PL_T, PL_E)])
    assert lr is not None
    assert lr.statistic == pytest.approx(16.79, abs=0.01) and lr.df == 1
    assert lr.observed == [9.0, 21.0] and lr.expected[0] == pytest.approx(19.25, abs=0.01)
    assert lr.p_value == pytest.approx(4.17e-5, rel=0.01)


def test_chi2_tail_and_edge_cases() -> None:
    assert survival.chi2_sf(3.841458820694124, 1) == pytest.approx(0.05, rel=1e-9)
    assert survival.chi2_sf(5.991464547107979, 2) == pytest.approx(0.05, rel=1e-9)
    assert survival.chi2_sf(0.0, 3) == 1.0
    assert survival.logrank([([1, 2], [0, 0]), ([3], [0])]) is None  # no events
    assert survival.logrank([([1, 2], [1, 1])]) is None  # one group
    with pytest.raises(ValueError, match="negative"):
        survival.kaplan_meier([-1], [1])
    three = survival.logrank([([1, 2, 3], [1, 1, 1]), ([4, 5, 6], [1, 1, 1]), ([7, 8, 9], [1, 0, 1])])
    assert three is not None and three.df == 2 and 0 < three.p_value < 1 and not math.isnan(three.statistic)


def test_project_base_url_and_macro(monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings.project_base_url("http://h/fhir/", "p1") == "http://h/fhir"
    assert settings.project_base_url("http://h/fhir", "p1", "url") == "http://h/fhir/p1"
    with pytest.raises(settings.SettingsError):
        settings.project_base_url("http://h/fhir", "../x", "url")
    monkeypatch.setenv("FHIR_BASE_URL", "http://fhir:8080/fhir")
    monkeypatch.setenv("KAAPANA_FHIR_PARTITIONING", "url")
    run = SimpleNamespace(conf={"project_form": {"name": "lung-study", "id": "7"}})
    assert settings.fhir_base_url_macro(run) == "http://fhir:8080/fhir/lung-study"
    assert settings.fhir_base_url_macro(SimpleNamespace(conf={})) == "http://fhir:8080/fhir/admin"
    st = settings.load()
    with pytest.raises(settings.SettingsError, match="not configured"):
        st.check_project("other")


def test_api_rejects_bad_requests_without_a_server() -> None:
    st = settings.WebSettings(fhir_url="http://127.0.0.1:9/fhir")
    assert api.handle("POST", "cohorts", st=st).status == 403  # no X-Requested-By: a cross-site form
    assert api.handle("POST", "cohorts", st=st, headers={"X-Requested-By": "kaapana-fhir"}).status == 405
    assert api.handle("DELETE", "cohorts/all/rows", st=st).status == 405
    assert api.handle("GET", "nope", st=st).status == 404
    r = api.handle("GET", "cohorts/all/rows", {"project": "x"}, st=st)
    assert r.status == 404 and "not configured" in r.json()["error"]
    assert api.handle("GET", "cohorts/<script>/rows", st=st).status == 404
    assert api.handle("GET", "cohorts/all/rows", {"limit": "0"}, st=st).status == 400
    assert api.handle("GET", "cohorts/all/rows", {"limit": "x"}, st=st).status == 400
    assert api.handle("GET", "openapi.yaml", st=st).body.startswith(b"openapi: 3")
    with pytest.raises(api.ApiError):
        api.CohortDefinition.from_json({"id": "../etc"}, "x.json")


def test_plugin_import_loads_no_heavy_modules() -> None:
    code = ("import sys; sys.path.insert(0, 'plugins'); import kaapana_fhir_plugin as p; "
            "heavy = [m for m in ('pandas', 'pyarrow', 'plotly', 'fhirpathpy', 'numpy') if m in sys.modules]; "
            "print(heavy, p.KaapanaFhirPlugin.name, len(p.KaapanaFhirPlugin.operator_extra_links))")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1] == "[] kaapana_fhir 3"
