"""The real Airflow web server for the web tests (Airflow 2.11 ``webserver`` from .venv, or Airflow 3
``api-server`` from the venv of .ci/airflow3-check.sh) with our plugins/ folder on a free 127.0.0.1 port, in a temp
AIRFLOW_HOME with its own SQLite DB and an admin user; stopped by PID. The code is the demo's
(:mod:`kaapana_fhir.dev.demo_web`); this module fixes the tests' throw-away account."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kaapana_fhir.dev import demo_web
from kaapana_fhir.dev.demo_web import AirflowWeb
from kaapana_fhir.dev.stack import free_port
from tests.support.browser import wait_for

__all__ = ["PASSWORD", "USER", "AirflowWeb", "airflow_web", "free_port", "login"]

USER, PASSWORD = "kf-admin", "kf-admin-pw"  # test-only account of the throw-away Airflow DB


@contextmanager
def airflow_web(bin_dir: Path, extra_env: Mapping[str, str], *, deadline_s: float = 300.0) -> Iterator[AirflowWeb]:
    with demo_web.airflow_web(bin_dir, extra_env, user=USER, password=PASSWORD, deadline_s=deadline_s) as web:
        yield web


def login(driver: Any, web: AirflowWeb, screenshot: Path, timeout: float = 300.0) -> None:
    """Log ``driver`` in with the test account; it stays on Airflow's home page. That page logs a jQuery error
    of Airflow's own, so the browser and performance logs are drained here: only our pages are judged."""
    driver.get(f"{web.url}/login/")
    driver.find_element("id", "username").send_keys(USER)
    driver.find_element("id", "password").send_keys(PASSWORD)
    driver.find_element("css selector", "input[type=submit], button[type=submit]").click()
    wait_for(driver, lambda: "/login" not in driver.current_url, "login", timeout=timeout, screenshot=screenshot)
    driver.get_log("browser")
    driver.get_log("performance")
