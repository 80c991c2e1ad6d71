"""Start the real Airflow web server with our plugins/ folder (Airflow 2.11 ``webserver`` from .venv, or
Airflow 3 ``api-server`` from the venv of .ci/airflow3-check.sh) on a free 127.0.0.1 port, in a temp
AIRFLOW_HOME with its own SQLite DB and an admin user; stop it by PID."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[2]
USER, PASSWORD = "kf-admin", "kf-admin-pw"  # test-only account of the throw-away Airflow DB


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class AirflowWeb:
    url: str
    home: Path
    pid: int
    major: int
    log: Path

    def session(self) -> requests.Session:
        """A logged-in session (Airflow 2: the login form; Airflow 3: a JWT from /auth/token as cookie)."""
        s = requests.Session()
        if self.major >= 3:
            r = s.post(f"{self.url}/auth/token", json={"username": USER, "password": PASSWORD}, timeout=30)
            r.raise_for_status()
            token = r.json()["access_token"]
            s.headers["Authorization"] = f"Bearer {token}"
            s.cookies.set("_token", token, domain="127.0.0.1")
            return s
        import re

        page = s.get(f"{self.url}/login/", timeout=30).text
        csrf = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
        r = s.post(f"{self.url}/login/", data={"username": USER, "password": PASSWORD,
                                                "csrf_token": csrf.group(1) if csrf else ""}, timeout=30)
        r.raise_for_status()
        return s


def _env(home: Path, extra: Mapping[str, str], major: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update({
        "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"), "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__CORE__LAZY_LOAD_PLUGINS": "False", "AIRFLOW__WEBSERVER__WORKERS": "1",
        "AIRFLOW__WEBSERVER__SECRET_KEY": "kaapana-fhir-test-only",
        "AIRFLOW__WEBSERVER__WEB_SERVER_WORKER_TIMEOUT": "600",
        "AIRFLOW__API__AUTH_BACKENDS": "airflow.api.auth.backend.basic_auth,airflow.api.auth.backend.session",
        "AIRFLOW__API_AUTH__JWT_SECRET": "kaapana-fhir-test-only-jwt-secret-0123456789",
        "AIRFLOW__API__SECRET_KEY": "kaapana-fhir-test-only",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
    })
    env.update(extra)
    return env


@contextmanager
def airflow_web(bin_dir: Path, extra_env: Mapping[str, str], *, deadline_s: float = 240.0) -> Iterator[AirflowWeb]:
    airflow = str(bin_dir / "airflow")
    ver = subprocess.run([str(bin_dir / "python"), "-c", "import airflow; print(airflow.__version__)"],
                         capture_output=True, text=True, check=True).stdout.strip()
    major = int(ver.split(".")[0])
    home = Path(tempfile.mkdtemp(prefix="kf-airflow-web-"))
    (home / "dags").mkdir()
    (home / "passwords.json").write_text(json.dumps({USER: PASSWORD}))
    env = _env(home, extra_env, major)
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True, timeout=600)
    if major < 3:
        subprocess.run([airflow, "users", "create", "-u", USER, "-p", PASSWORD, "-r", "Admin", "-f", "K", "-l", "F",
                        "-e", "kf@example.org"], env=env, check=True, capture_output=True, timeout=300)
    port = free_port()
    cmd = ([airflow, "webserver", "-p", str(port), "-H", "127.0.0.1"] if major < 3 else
           [airflow, "api-server", "-p", str(port), "-H", "127.0.0.1"])
    log = home / "web.log"
    fh = open(log, "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    web = AirflowWeb(url, home, proc.pid, major, log)
    try:
        end = time.monotonic() + deadline_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"airflow web server exited ({proc.returncode}); log:\n{log.read_text()[-3000:]}")
            try:
                if requests.get(f"{url}/health" if major < 3 else f"{url}/api/v2/monitor/health", timeout=3).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > end:
                raise RuntimeError(f"airflow web server not up after {deadline_s}s; log:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield web
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        fh.close()
