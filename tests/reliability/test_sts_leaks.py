"""Kaapana's MinIO credentials never leak (issue #15): the real Keycloak → MinIO STS path (``sso_stack`` from
``tests/conftest.py``: Keycloak 26 with realm ``kaapana``, MinIO with Keycloak as OpenID provider).

The watcher (``find_new_objects``) and the table import (``import_object``: one good table, one rejected, a
refused bucket, a wrong client secret) run with DEBUG on every logger (root, ``urllib3``, ``requests``,
``minio``, ``kaapana_fhir``), and then everything they produced is searched for every secret of the run:
the STS session token, the temporary access and secret keys, the Keycloak access and refresh tokens, the
client secret and the project user's password. Searched: log records, stdout/stderr (file-descriptor level),
exception texts and tracebacks, the import reports and every object written to the bucket. The same run as a
Kaapana pod (``kaapana-fhir -v kaapana-run`` in its own process, DEBUG) is searched for the secrets it knows
and for any JWT or temporary access key.

Negative controls prove the search can fail: the minio client's own HTTP trace (which our code never turns
on) prints the session token, to stderr and to a logger, and :func:`leaks` finds it in both places.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import traceback
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kaapana_fhir.clients.s3 import KeycloakStsProvider, ObjectStore, object_store_from_env
from kaapana_fhir.dev import sso
from kaapana_fhir.dev.synthetic_tables import synthetic_lung1_csv
from kaapana_fhir.exceptions import KaapanaFhirError
from tests.reliability import outcomes

pytestmark = [pytest.mark.reliability, pytest.mark.integration]
GUARDS = "leak"
BUCKET = "project-admin"
LOGGERS = ("", "urllib3", "requests", "minio", "kaapana_fhir")
#: a JWT (Keycloak tokens, MinIO STS session tokens) and a MinIO temporary access key
JWT = re.compile(r"eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}(?:\.[A-Za-z0-9_-]*)?")
ACCESS_KEY = re.compile(r"(?<![A-Z0-9])[A-Z0-9]{20}(?![A-Z0-9])")


class Secrets:
    """Every secret the run used; temporary keys are recorded each time the provider hands them out."""

    def __init__(self, st: sso.SsoStack) -> None:
        self.named: dict[str, str] = {"client secret": st.keycloak.client_secret,
                                      "user password": st.keycloak.user_password}
        self.providers: list[KeycloakStsProvider] = []

    def watch(self, store: ObjectStore) -> ObjectStore:
        provider = store.provider
        assert isinstance(provider, KeycloakStsProvider)
        self.providers.append(provider)
        inner = provider.retrieve

        def retrieve() -> Any:
            creds = inner()
            self.named[f"temporary access key {creds.access_key[:3]}…"] = creds.access_key
            self.named[f"temporary secret key of {creds.access_key[:3]}…"] = creds.secret_key
            self.named[f"STS session token of {creds.access_key[:3]}…"] = creds.session_token or ""
            return creds

        provider.retrieve = retrieve  # type: ignore[method-assign]
        return store

    def all(self) -> dict[str, str]:
        out = dict(self.named)
        for i, p in enumerate(self.providers):
            out[f"Keycloak access token {i}"] = p._token or ""
            out[f"Keycloak refresh token {i}"] = p._refresh_token or ""
        return {k: v for k, v in out.items() if v}


def leaks(secrets: dict[str, str], places: dict[str, str]) -> list[str]:
    """``secret name in place`` for every secret found in a place (empty: nothing leaked)."""
    return [f"{name} in {place}" for place, text in places.items() for name, value in secrets.items()
            if value in text]


def redact(text: str, secrets: dict[str, str]) -> str:
    """``text`` for an assertion message: known secrets and anything token-shaped replaced."""
    for name, value in secrets.items():
        text = text.replace(value, f"<{name}>")
    return ACCESS_KEY.sub("<access key?>", JWT.sub("<JWT>", text))


@pytest.fixture()
def debug_everywhere(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    for name in LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name or None)
    yield caplog


def _error_text(fn: Callable[[], object]) -> str:
    """str, repr and the formatted traceback of the typed error ``fn`` raises."""
    with pytest.raises(KaapanaFhirError) as exc:
        fn()
    return f"{exc.value}\n{exc.value!r}\n" + "".join(traceback.format_exception(exc.value))


def _objects(root: ObjectStore, prefix: str) -> dict[str, str]:
    return {f"s3://{BUCKET}/{o.key}": root.get_bytes(BUCKET, o.key).decode("utf-8", "replace")
            for o in root.list(BUCKET, prefix) if o.size < 2_000_000}


def test_sts_secrets_never_leak_from_watcher_and_import(sso_stack: sso.SsoStack, fhir: Any,
                                                        debug_everywhere: pytest.LogCaptureFixture,
                                                        capfd: pytest.CaptureFixture[str]) -> None:
    from kaapana_fhir.flows.tables.flow import import_object
    from kaapana_fhir.flows.tables.watch import find_new_objects

    secrets = Secrets(sso_stack)
    store = secrets.watch(object_store_from_env(sso_stack.env()))
    root = ObjectStore(sso_stack.minio.url, sso_stack.minio.root_user, sso_stack.minio.root_password)
    tag = uuid.uuid4().hex[:8]
    prefix = f"fhir-import/leak-{tag}/"
    ids = [f"LEAK-{tag}-{i}" for i in range(3)]
    store.put_bytes(BUCKET, f"{prefix}good.csv", synthetic_lung1_csv(ids, seed=11).encode())
    store.put_bytes(BUCKET, f"{prefix}good.preset", b"lung1\n")
    head, row = synthetic_lung1_csv([f"LEAKBAD-{tag}"], seed=12).splitlines()
    cells = row.split(",")
    cells[1] = "not-a-number"  # age
    store.put_bytes(BUCKET, f"{prefix}bad.csv", f"{head}\n{','.join(cells)}\n".encode())
    store.put_bytes(BUCKET, f"{prefix}bad.preset", b"lung1\n")

    confs = find_new_objects(store, BUCKET, prefix)  # the watcher
    assert sorted(c["object_key"] for c in confs) == [f"{prefix}bad.csv", f"{prefix}good.csv"]
    reports = {}
    for c in confs:
        reports[c["object_key"]] = import_object(store, fhir, BUCKET, c["object_key"], signature=c.get("signature"))
    assert reports[f"{prefix}good.csv"].status == "imported"
    assert reports[f"{prefix}bad.csv"].status == "rejected"
    assert find_new_objects(store, BUCKET, prefix) == []  # state written back with the temporary keys

    errors = {
        "refused bucket": _error_text(lambda: store.get_bytes("project-other", "fhir-import/x.csv")),
        "wrong client secret": _error_text(lambda: list(secrets.watch(object_store_from_env(
            {**sso_stack.env(), "KAAPANA_CLIENT_SECRET": "wrong-" + tag})).list(BUCKET, prefix))),
    }
    # never let an assertion print a secret: only booleans and names below
    found = secrets.all()
    creds = store.provider.retrieve()
    patterns_hold = bool(JWT.fullmatch(creds.session_token or "")) and bool(ACCESS_KEY.fullmatch(creds.access_key))
    assert patterns_hold, "the JWT / access-key patterns of the pod test do not describe MinIO's STS credentials"
    names = sorted(found)
    assert any(k.startswith("Keycloak access token") for k in names) and len(names) >= 7, names
    out, err = capfd.readouterr()
    places = {"log records": debug_everywhere.text, "stdout": out, "stderr": err,
              "import reports (returned)": json.dumps({k: r.as_dict() for k, r in reports.items()}),
              **errors, **_objects(root, prefix)}
    where = sorted(places)
    assert any(k.endswith("import-report.json") for k in where), where
    http_logged = "urllib3" in debug_everywhere.text
    assert http_logged, "the HTTP layer did not log at DEBUG: the search would prove nothing"
    outcomes.record("input", len(places))
    assert leaks(found, places) == []


def test_negative_control_minio_trace_leaks_the_session_token(sso_stack: sso.SsoStack,
                                                              debug_everywhere: pytest.LogCaptureFixture,
                                                              capfd: pytest.CaptureFixture[str]) -> None:
    """The search finds a real leak: minio's HTTP trace prints ``X-Amz-Security-Token`` (to stderr, and to a
    logger when the trace stream is a log writer)."""
    secrets = Secrets(sso_stack)
    store = secrets.watch(object_store_from_env(sso_stack.env()))
    key = f"fhir-import/leak-{uuid.uuid4().hex[:8]}/trace.csv"

    class LogStream:
        def write(self, text: str) -> None:
            logging.getLogger("minio.trace").debug("%s", text)

    store._client.trace_on(sys.stderr)
    try:
        store.put_bytes(BUCKET, key, b"x")
    finally:
        store._client.trace_off()
    store._client.trace_on(LogStream())  # type: ignore[arg-type]
    try:
        assert store.get_bytes(BUCKET, key) == b"x"
    finally:
        store._client.trace_off()
    out, err = capfd.readouterr()
    found = leaks(secrets.all(), {"stderr": err, "log records": debug_everywhere.text})
    token = next(k for k in sorted(secrets.all()) if k.startswith("STS session token"))
    detected = f"{token} in stderr" in found and f"{token} in log records" in found
    assert detected, found
    outcomes.record("input")


def test_kaapana_pod_run_with_sts_at_debug_prints_no_secret(sso_stack: sso.SsoStack, fhir_url: str,
                                                            tmp_path: Path) -> None:
    """``kaapana-fhir -v kaapana-run`` (root logger at DEBUG) with exactly the pod's MinIO env: the table
    import reads its object and writes its report with STS keys; its stdout/stderr hold no client secret, no
    password, no JWT (Keycloak token or STS session token) and no temporary access key."""
    root = ObjectStore(sso_stack.minio.url, sso_stack.minio.root_user, sso_stack.minio.root_password)
    tag = uuid.uuid4().hex[:8]
    key = f"fhir-import/leak-{tag}/pod.csv"
    root.put_bytes(BUCKET, key, synthetic_lung1_csv([f"LEAKPOD-{tag}"], seed=13).encode())
    wdir = tmp_path / "run"
    (wdir / "conf").mkdir(parents=True)
    (wdir / "conf" / "conf.json").write_text(json.dumps(
        {"workflow_form": {"object_key": key, "bucket": BUCKET, "preset": "lung1"}}), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("S3_", "MINIO_", "KAAPANA_", "AWS_"))}
    env.update({**sso_stack.env(), "WORKFLOW_DIR": str(wdir), "RUN_ID": f"leak-{tag}",
                "KAAPANA_FHIR_TASK": "import-table", "FHIR_BASE_URL": fhir_url,
                "KAAPANA_FHIR_SETTINGS": str(tmp_path / "no-settings.json")})
    res = subprocess.run([sys.executable, "-m", "kaapana_fhir.cli.main", "-v", "kaapana-run"], env=env,
                         capture_output=True, text=True, timeout=300)
    named = {"client secret": sso_stack.keycloak.client_secret, "user password": sso_stack.keycloak.user_password}
    text = res.stdout + res.stderr
    assert res.returncode == 0, redact(res.stderr[-3000:], named)
    debug_logged = "DEBUG" in text and "urllib3" in text
    assert debug_logged, "the pod run did not log HTTP at DEBUG: the search would prove nothing"
    report = root.get_bytes(BUCKET, f"fhir-import/leak-{tag}/pod.import-report.json").decode()
    assert json.loads(report)["status"] == "imported"
    places = {"pod stdout/stderr": text, "import report": report,
              "result file": "".join(p.read_text() for p in wdir.rglob("*.json"))}
    outcomes.record("input", len(places))
    assert leaks(named, places) == []
    for place, t in places.items():  # the messages never repeat what was found (CI logs are read by many)
        jwt_at = [m.start() for m in JWT.finditer(t)]
        key_at = [m.start() for m in ACCESS_KEY.finditer(t)]
        assert jwt_at == [], f"a JWT (Keycloak/STS token) in {place} at offsets {jwt_at[:5]}"
        assert key_at == [], f"a temporary access key in {place}? at offsets {key_at[:5]}"
