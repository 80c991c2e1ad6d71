"""The local stack works from an installed package: the server sources ship as package data of kaapana_fhir.dev,
and the HAPI build goes to a cache keyed by the sources, not into the checkout."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from kaapana_fhir.dev import stack

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(REPO)], check=True, capture_output=True, timeout=600)
    (whl,) = out.glob("kaapana_fhir-*.whl")
    return whl


def test_wheel_ships_the_server_sources(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "kaapana_fhir/dev/servers/hapi/pom.xml" in names
    assert "kaapana_fhir/dev/servers/orthanc/bind_loopback.c" in names
    java = [n for n in names if n.startswith("kaapana_fhir/dev/servers/hapi/src/main/java/") and n.endswith(".java")]
    assert len(java) >= 3
    assert not [n for n in names if "/target/" in n]
    # the explorer page and the API spec are package data too
    assert {"kaapana_fhir/web/openapi.yaml", "kaapana_fhir/web/static/explorer.html"} <= names


def test_jar_path_follows_the_sources_and_the_cache_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAAPANA_FHIR_CACHE", str(tmp_path))
    monkeypatch.delenv("KAAPANA_FHIR_HAPI_JAR", raising=False)
    jar = stack.hapi_jar()
    assert jar.is_relative_to(tmp_path) and jar.name == "fhir-test-server.jar"
    assert jar.parent.parent.name.startswith("hapi-")
    monkeypatch.setenv("KAAPANA_FHIR_HAPI_JAR", str(tmp_path / "missing.jar"))
    with pytest.raises(stack.StackError, match="missing.jar"):
        stack.build_hapi()
