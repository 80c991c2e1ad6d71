"""Foundation unit tests: ids, bundles, validation, client error mapping, hooks, layering."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import responses

from kaapana_fhir.clients.fhir import FhirClient, RetryPolicy, redact_url
from kaapana_fhir.clients.s3 import safe_local_path
from kaapana_fhir.core import bundle
from kaapana_fhir.core.ids import (
    DEFAULT_PATIENT_SYSTEM,
    is_valid_fhir_id,
    normalize_uid,
    patient_id,
    stable_id,
)
from kaapana_fhir.core.validate import validate_bundle, validate_resource
from kaapana_fhir.exceptions import ConfigError, FhirServerError, MappingError, ResourceNotFound

PKG = Path(__file__).resolve().parents[2] / "operators" / "kaapana_fhir"


def test_patient_id_is_deterministic_and_normalised() -> None:
    a = patient_id(None, "LUNG1-001")
    assert a == patient_id(DEFAULT_PATIENT_SYSTEM, " LUNG1-001 \x00")
    assert a != patient_id("urn:other", "LUNG1-001")
    assert is_valid_fhir_id(a) and not a.isdigit()


@pytest.mark.parametrize("bad", ["", "   ", None])
def test_patient_id_rejects_empty(bad: str | None) -> None:
    with pytest.raises(MappingError, match="patient"):
        patient_id(None, bad)  # type: ignore[arg-type]


def test_stable_id_parts_are_not_ambiguous() -> None:
    assert stable_id("X", "a", "bc") != stable_id("X", "ab", "c")
    assert len(stable_id("ImagingStudy", "1.2.3")) <= 64


@pytest.mark.parametrize("uid,ok", [("1.2.840.10008.1.2", True), ("1.2.3\x00", True), ("1.02.3", False),
                                    ("abc", False), ("1." + "1" * 70, False)])
def test_normalize_uid(uid: str, ok: bool) -> None:
    if ok:
        assert normalize_uid(uid, tag="(0020,000D)") == uid.rstrip("\x00")
    else:
        with pytest.raises(MappingError, match=r"\(0020,000D\)"):
            normalize_uid(uid, tag="(0020,000D)")


def test_bundle_orders_referenced_types_first_and_dedupes() -> None:
    obs = bundle.put_entry({"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"}})
    pat = bundle.put_entry({"resourceType": "Patient", "id": "p1"})
    pat2 = bundle.put_entry({"resourceType": "Patient", "id": "p1", "gender": "male"})
    b = bundle.transaction([obs, pat, pat2])
    assert [e["resource"]["resourceType"] for e in b["entry"]] == ["Patient", "Observation"]
    assert b["entry"][0]["resource"]["gender"] == "male"
    assert b["entry"][0]["request"] == {"method": "PUT", "url": "Patient/p1"}
    validate_bundle(b)


def test_chunked_keeps_order_and_bounds() -> None:
    chunks = list(bundle.chunked(range(7), 3))
    assert chunks == [[0, 1, 2], [3, 4, 5], [6]]
    with pytest.raises(MappingError):
        list(bundle.chunked([1], 0))


def test_validate_resource_names_the_element() -> None:
    with pytest.raises(MappingError, match="birthDate"):
        validate_resource({"resourceType": "Patient", "id": "p", "birthDate": "2003.02.01"})


@responses.activate
def test_client_maps_statuses_to_typed_errors() -> None:
    base = "http://fhir.invalid/fhir"
    responses.get(f"{base}/Patient/a", status=404, json={"resourceType": "OperationOutcome",
                                                          "issue": [{"severity": "error", "diagnostics": "gone"}]})
    responses.get(f"{base}/Patient/b", status=503)
    responses.get(f"{base}/Patient/b", status=200, json={"resourceType": "Patient", "id": "b"})
    c = FhirClient(base, retry=RetryPolicy(max_attempts=3, initial_wait=0.001, max_wait=0.001))
    with pytest.raises(ResourceNotFound) as exc:
        c.read("Patient", "a")
    assert exc.value.status_code == 404 and "gone" in str(exc.value)
    assert c.read("Patient", "b")["id"] == "b"
    assert c.stats.retries == 1


@responses.activate
def test_client_search_follows_next_links_and_encodes_params() -> None:
    base = "http://fhir.invalid/fhir"
    responses.get(f"{base}/Observation", json={"resourceType": "Bundle", "type": "searchset",
                                                "link": [{"relation": "next", "url": f"{base}?page=2"}],
                                                "entry": [{"resource": {"resourceType": "Observation", "id": "1"}}]})
    responses.get(f"{base}?page=2", json={"resourceType": "Bundle", "type": "searchset",
                                          "entry": [{"resource": {"resourceType": "Observation", "id": "2"}}]})
    c = FhirClient(base)
    ids = [r["id"] for r in c.search("Observation", {"code": "a&b=c"})]
    assert ids == ["1", "2"]
    assert "code=a%26b%3Dc" in responses.calls[0].request.url


def test_client_rejects_bad_base_url_and_redacts_credentials() -> None:
    with pytest.raises(ValueError, match="Malformed"):
        FhirClient("ftp://x")
    assert redact_url("http://user:secret@h:1/fhir") == "http://h:1/fhir"


@responses.activate
def test_error_messages_never_contain_credentials() -> None:
    base = "http://user:s3cr3t@fhir.invalid/fhir"
    responses.get("http://fhir.invalid/fhir/Patient/x", status=500, body="boom")
    c = FhirClient(base, token="tok-XYZ", retry=RetryPolicy(max_attempts=1))
    with pytest.raises(FhirServerError) as exc:
        c.read("Patient", "x")
    assert "s3cr3t" not in str(exc.value) and "tok-XYZ" not in str(exc.value)


@pytest.mark.parametrize("key", ["../etc/passwd", "/abs/x", "a/../../b", "a\x00b", ""])
def test_safe_local_path_rejects_escapes(tmp_path: Path, key: str) -> None:
    with pytest.raises(ConfigError):
        safe_local_path(tmp_path, key)


def test_safe_local_path_accepts_nested(tmp_path: Path) -> None:
    assert safe_local_path(tmp_path, "fhir-import/a b.csv") == (tmp_path / "fhir-import" / "a b.csv").resolve()


def test_hooks_build_clients_from_connection_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_FHIR_TEST", json.dumps({"conn_type": "fhir", "host": "https://fhir.example/fhir",
                                                              "extra": {"token": "abc", "verify": False}}))
    from kaapana_fhir.hooks.fhir import FhirHook

    client = FhirHook("fhir_test").get_conn()
    assert client.base_url == "https://fhir.example/fhir"
    assert client.session.headers["Authorization"] == "Bearer abc" and client.session.verify is False


def test_hooks_fall_back_to_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FHIR_BASE_URL", "http://127.0.0.1:9/fhir")
    from kaapana_fhir.hooks.fhir import FhirHook

    assert FhirHook("fhir_missing_conn_xyz").get_conn().base_url == "http://127.0.0.1:9/fhir"


NO_AIRFLOW_DIRS = ("core", "clients", "flows")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
            if node.module.startswith("kaapana_fhir."):
                names.add(node.module)
    return names


def test_layering_core_clients_flows_never_import_airflow() -> None:
    offenders = []
    for d in NO_AIRFLOW_DIRS:
        for path in (PKG / d).rglob("*.py"):
            imps = _imports(path)
            if "airflow" in imps or any(i.startswith(("kaapana_fhir.hooks", "kaapana_fhir.operators",
                                                       "kaapana_fhir.airflow_compat")) for i in imps):
                offenders.append(str(path.relative_to(PKG)))
    assert offenders == []


def test_core_never_does_network_io() -> None:
    offenders = [str(p.relative_to(PKG)) for p in (PKG / "core").rglob("*.py")
                 if _imports(p) & {"requests", "boto3", "dicomweb_client", "urllib3", "socket"}]
    assert offenders == []


def test_no_print_exit_or_bare_except_pass_in_package() -> None:
    bad = []
    for path in PKG.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("print", "exit"):
                bad.append(f"{path.name}:{node.lineno} {node.func.id}()")
            if isinstance(node, ast.ExceptHandler) and len(node.body) == 1 and isinstance(node.body[0], ast.Pass) \
                    and (node.type is None or (isinstance(node.type, ast.Name) and node.type.id == "Exception")):
                bad.append(f"{path.name}:{node.lineno} except-pass")
    assert bad == []
