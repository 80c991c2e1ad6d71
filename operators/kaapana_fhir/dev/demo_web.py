"""The Airflow web server of the demo and of the web tests: the real Airflow ``webserver`` (2.11, from the venv of
``bin_dir``) or ``api-server`` (3.x) with our ``plugins/`` folder (cohort explorer at ``/kaapana-fhir/``, retrieval
API at ``/kaapana-fhir/api/``) on a free 127.0.0.1 port, in its own AIRFLOW_HOME (SQLite) with one admin user.

:func:`start` runs it detached (it keeps running after the demo process ends, like the stack's servers) and
records it in ``<home>/web.json``; :func:`stop` ends it by that PID. :func:`airflow_web` is the throw-away variant
for tests (temporary home, stopped on exit). The secret keys are generated per home, never fixed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import requests

from kaapana_fhir.dev import stack as devstack

log = logging.getLogger(__name__)

STATE_FILE = "web.json"


class WebError(devstack.StackError):
    """The Airflow web server could not be prepared, started or reached."""


@dataclass
class AirflowWeb:
    url: str
    home: Path
    pid: int
    major: int
    log: Path
    user: str
    password: str

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def explorer_url(self) -> str:
        return f"{self.url}/kaapana-fhir/"

    @property
    def api_url(self) -> str:
        return f"{self.url}/kaapana-fhir/api"

    def session(self) -> requests.Session:
        """A logged-in session (Airflow 2: the login form; Airflow 3: a JWT from /auth/token, also as cookie)."""
        s = requests.Session()
        if self.major >= 3:
            r = s.post(f"{self.url}/auth/token", json={"username": self.user, "password": self.password}, timeout=30)
            r.raise_for_status()
            token = r.json()["access_token"]
            s.headers["Authorization"] = f"Bearer {token}"
            s.cookies.set("_token", token, domain="127.0.0.1")
            return s
        page = s.get(f"{self.url}/login/", timeout=30).text
        csrf = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
        r = s.post(f"{self.url}/login/", data={"username": self.user, "password": self.password,
                                                "csrf_token": csrf.group(1) if csrf else ""}, timeout=30)
        r.raise_for_status()
        if "/login" in r.url:
            raise WebError(f"login as {self.user!r} at {self.url} failed")
        return s

    def save(self) -> Path:
        """``<home>/web.json`` (mode 0600: it holds the demo login)."""
        path = self.home / STATE_FILE
        path.touch(mode=0o600)
        data = asdict(self) | {"home": str(self.home), "log": str(self.log)}
        path.write_text(json.dumps(data, indent=2))
        return path

    @classmethod
    def load(cls, home: str | Path) -> AirflowWeb | None:
        path = Path(home) / STATE_FILE
        if not path.is_file():
            return None
        try:
            d = json.loads(path.read_text())
            return cls(str(d["url"]), Path(d["home"]), int(d["pid"]), int(d["major"]), Path(d["log"]),
                       str(d["user"]), str(d["password"]))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("%s is unreadable (%s); ignored", path, exc)
            return None


def airflow_version(bin_dir: Path) -> int:
    """Major version of the Airflow installed in the venv of ``bin_dir``."""
    res = subprocess.run([str(bin_dir / "python"), "-c", "import airflow; print(airflow.__version__)"],
                         capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        raise WebError(f"no Airflow in {bin_dir}: {res.stderr[-500:]}")
    return int(res.stdout.strip().split(".")[0])


def _secret(home: Path, name: str) -> str:
    """A random secret kept in ``home`` (so a restarted server keeps its sessions valid)."""
    p = home / f".{name}"
    if not p.is_file():
        p.touch(mode=0o600)
        p.write_text(secrets.token_hex(32))
    return p.read_text().strip()


def airflow_env(home: Path, extra: Mapping[str, str], user: str,
                base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The web server's environment: ``base`` (default this process's) without its AIRFLOW_* settings, the repo's
    plugins/, SQLite in ``home``, basic auth for API clients, then ``extra``."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if not k.startswith("AIRFLOW")}
    env.update({
        "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(devstack.repo_root() / "plugins"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__CORE__LAZY_LOAD_PLUGINS": "False", "AIRFLOW__WEBSERVER__WORKERS": "1",
        "AIRFLOW__WEBSERVER__SECRET_KEY": _secret(home, "webserver-secret"),
        "AIRFLOW__WEBSERVER__WEB_SERVER_WORKER_TIMEOUT": "600",
        "AIRFLOW__WEBSERVER__WARN_DEPLOYMENT_EXPOSURE": "False",
        "AIRFLOW__API__AUTH_BACKENDS": "airflow.api.auth.backend.basic_auth,airflow.api.auth.backend.session",
        "AIRFLOW__API_AUTH__JWT_SECRET": _secret(home, "jwt-secret"),
        "AIRFLOW__API__SECRET_KEY": _secret(home, "api-secret"),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{user}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
    })
    env.update(extra)
    return env


def _run(cmd: list[str], env: Mapping[str, str], what: str) -> None:
    res = subprocess.run(cmd, env=dict(env), capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        raise WebError(f"{what} failed ({res.returncode}): {res.stderr[-1500:] or res.stdout[-1500:]}")


def user_commands(airflow: str, user: str, password: str) -> tuple[list[str], list[str]]:
    """The Airflow 2 commands that create ``user`` and reset its password. The password goes as one
    ``--password=`` argument so that a random one starting with ``-`` is not read as an option."""
    create = [airflow, "users", "create", "-u", user, f"--password={password}", "-r", "Admin", "-f", "Kaapana",
              "-l", "FHIR", "-e", f"{user}@example.org"]
    return create, [airflow, "users", "reset-password", "-u", user, f"--password={password}"]


def start(bin_dir: Path, home: Path, extra_env: Mapping[str, str], *, user: str, password: str,
          port: int | None = None, deadline_s: float = 300.0, base_env: Mapping[str, str] | None = None
          ) -> AirflowWeb:
    """Migrate the DB in ``home`` (once), create ``user`` (or reset its password), start the server detached and
    wait until it answers; on failure it is stopped and :class:`WebError` names the log. ``base_env``: the
    environment to start from (a snapshot, when another thread changes ``os.environ``)."""
    home = home.resolve()
    (home / "dags").mkdir(parents=True, exist_ok=True)
    major = airflow_version(bin_dir)
    airflow = str(bin_dir / "airflow")
    pw_file = home / "passwords.json"
    pw_file.touch(mode=0o600)
    pw_file.write_text(json.dumps({user: password}))
    env = airflow_env(home, extra_env, user, base_env)
    if not (home / ".migrated").is_file():
        _run([airflow, "db", "migrate"], env, "airflow db migrate")
        (home / ".migrated").write_text("ok")
    if major < 3:
        create, reset = user_commands(airflow, user, password)
        res = subprocess.run(create, env=env, capture_output=True, text=True, timeout=600)
        if res.returncode != 0 or "already exist" in res.stdout + res.stderr:
            _run(reset, env, "airflow users reset-password")
    port = port or devstack.free_port()
    cmd = ([airflow, "webserver", "-p", str(port), "-H", "127.0.0.1"] if major < 3 else
           [airflow, "api-server", "-p", str(port), "-H", "127.0.0.1"])
    logfile = home / "web.log"
    url = f"http://127.0.0.1:{port}"
    health = f"{url}/health" if major < 3 else f"{url}/api/v2/monitor/health"
    try:
        proc = devstack.start_server(cmd, logfile, health, deadline_s, env=env)
    except devstack.StackError as exc:
        tail = logfile.read_text(errors="replace")[-3000:] if logfile.is_file() else ""
        raise WebError(f"{exc}\n{tail}") from None
    web = AirflowWeb(url, home, proc.pid, major, logfile, user, password)
    web.save()
    return web


def _is_airflow(pid: int) -> bool:
    """The PID still belongs to an Airflow process (not a reused PID)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"airflow" in cmdline


def running(home: Path) -> AirflowWeb | None:
    """The web server recorded in ``home`` if it still runs and answers."""
    web = AirflowWeb.load(home)
    if web is None or not _is_airflow(web.pid) or not devstack.port_open(web.port):
        return None
    return web


def stop(home: Path) -> bool:
    """Stop the web server recorded in ``home`` by its PID (process group); True when one was running."""
    web = AirflowWeb.load(home)
    if web is None:
        return False
    alive = _is_airflow(web.pid)
    if alive:
        devstack.stop_pid(web.pid, timeout=30)
    (home / STATE_FILE).unlink(missing_ok=True)
    return alive


@contextmanager
def airflow_web(bin_dir: Path, extra_env: Mapping[str, str], *, user: str, password: str,
                deadline_s: float = 300.0) -> Iterator[AirflowWeb]:
    """A throw-away web server (temporary home), stopped and its home removed on exit."""
    home = Path(tempfile.mkdtemp(prefix="kf-airflow-web-"))
    try:
        yield start(bin_dir, home, extra_env, user=user, password=password, deadline_s=deadline_s)
    finally:
        stop(home)
        shutil.rmtree(home, ignore_errors=True)
