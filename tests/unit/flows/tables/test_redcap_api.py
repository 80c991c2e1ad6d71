"""REDCap API input checks: URL, token (never echoed), project name; the CLI's source rules."""

from __future__ import annotations

import pytest

from kaapana_fhir.exceptions import ConfigError
from kaapana_fhir.flows.tables.redcap_api import check_token, check_url, project_name


@pytest.mark.parametrize(("url", "want"), [
    ("https://redcap.example.org/api/", "https://redcap.example.org/api/"),
    ("https://redcap.example.org/api", "https://redcap.example.org/api/"),
    ("http://127.0.0.1:8080/redcap/api/", "http://127.0.0.1:8080/redcap/api/"),
    ("http://localhost/api", "http://localhost/api/"),
])
def test_good_urls(url: str, want: str) -> None:
    assert check_url(url) == want


@pytest.mark.parametrize(("url", "rule"), [
    ("http://redcap.example.org/api/", "only sent over https"),
    ("https://redcap.example.org/", "does not end in /api/"),
    ("https://user:pw@redcap.example.org/api/", "user info"),
    ("https://redcap.example.org/api/?token=x", "query"),
    ("ftp://redcap.example.org/api/", "not an http"),
])
def test_bad_urls(url: str, rule: str) -> None:
    with pytest.raises(ConfigError, match=rule):
        check_url(url)


def test_token_is_checked_and_never_echoed() -> None:
    assert check_token(" 0A1B2C3D4E5F60718293A4B5C6D7E8F9\n", "env") == "0A1B2C3D4E5F60718293A4B5C6D7E8F9"
    for bad in ("hunter2-hunter2-hunter2-hunter2!", "0A1B2C3D4E5F60718293A4B5C6D7E8F9AA"):
        with pytest.raises(ConfigError) as exc:
            check_token(bad, "env")
        assert bad not in str(exc.value) and "32 hexadecimal" in str(exc.value)
    with pytest.raises(ConfigError, match="no REDCap API token"):
        check_token(None, "env")


def test_project_name_follows_the_export_file_prefix() -> None:
    assert project_name("Lung Imaging") == "LungImaging"
    # at most 20 characters; "ü" and "–" are dropped
    assert project_name("lung imaging (pilot) 2026 – Würzburg") == "LungImagingPilot2026"
    assert project_name("  ") == "redcap"


def test_cli_needs_exactly_one_source(monkeypatch: pytest.MonkeyPatch) -> None:
    from kaapana_fhir.cli.main import main

    monkeypatch.delenv("KAAPANA_FHIR_REDCAP_TOKEN", raising=False)
    assert main(["import-table", "x.csv", "--redcap-url", "https://r.example.org/api/", "--out", "b.json"]) == 1
    assert main(["import-table", "--redcap-url", "https://r.example.org/api/", "--out", "b.json"]) == 1  # no token
