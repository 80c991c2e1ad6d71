"""Kaapana's processing-container contract, read without Airflow (used by ``kaapana-fhir kaapana-run``).

What Kaapana's ``KaapanaBaseOperator`` gives a container (Kaapana 0.6):

* env ``WORKFLOW_DIR`` (``/kaapana/mounted/data/<run_id>``), ``BATCH_NAME`` (default ``batch``),
  ``OPERATOR_IN_DIR``, ``OPERATOR_OUT_DIR``, ``RUN_ID``, ``DAG_ID``, ``TASK_ID``;
* ``$WORKFLOW_DIR/conf/conf.json``: the whole ``dag_run.conf`` (``workflow_form``, ``project_form``,
  ``data_form``);
* every ``workflow_form`` key as an UPPERCASE env var holding ``str(value)`` (lists arrive as Python reprs,
  hence :func:`parse_env_value` uses :func:`ast.literal_eval`, not JSON);
* endpoints from the platform env: ``MINIO_URL``, ``SERVICES_NAMESPACE``; tokens ``KAAPANA_*``.

Per batch element (one folder per series) the input is ``$WORKFLOW_DIR/$BATCH_NAME/<series>/$OPERATOR_IN_DIR``
and the output ``.../<series>/$OPERATOR_OUT_DIR``; batch-level output is ``$WORKFLOW_DIR/$OPERATOR_OUT_DIR``.
"""

from __future__ import annotations

import ast
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kaapana_fhir.core.limits import load_json_object, loads_json
from kaapana_fhir.exceptions import ConfigError

if TYPE_CHECKING:
    from kaapana_fhir.clients.s3 import S3Credentials

log = logging.getLogger(__name__)

#: exit code that makes Kaapana mark the task "skipped" (nothing to do)
EXIT_NOTHING_TO_DO = 126
#: in-cluster HAPI FHIR of the ``hapi-fhir`` application chart (``{ns}`` = services namespace)
DEFAULT_FHIR_URL = "http://hapi-fhir-service.{ns}.svc:8080/fhir"
DEFAULT_DICOMWEB_URL = "http://dicom-web-filter-service.{ns}.svc:8080"
RESULT_FILE = "kaapana-fhir-result.json"
#: written next to the DAG files by the workflow chart
#: (docker/kaapana-fhir/extension/kaapana-fhir-workflow, values ``kaapanaFhir``)
SETTINGS_FILE = "kaapana_fhir_settings.json"
SETTINGS_ENV = "KAAPANA_FHIR_SETTINGS"


def site_settings(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Site settings from the workflow chart: ``$KAAPANA_FHIR_SETTINGS`` or
    ``<dags folder>/kaapana_fhir_settings.json``
    (the folder that holds the ``kaapana_fhir`` package in Kaapana). Keys: ``fhir_base_url``,
    ``dicomweb_url``, ``import_watcher_bucket``, ``import_watcher_prefix``, ``import_watcher_schedule``.
    Empty dict when there is no file (plain Airflow). A local file read only: safe at DAG-parse time.
    """
    env = os.environ if environ is None else environ
    path = (
        Path(env[SETTINGS_ENV])
        if env.get(SETTINGS_ENV)
        else Path(__file__).resolve().parents[2] / SETTINGS_FILE
    )
    if not path.is_file():
        return {}
    return load_json_object(path, what="the site settings", hint="written by the kaapana-fhir-workflow chart")


def parse_env_value(raw: str | None) -> Any:
    """A workflow_form value as Kaapana passes it (``str(python_obj)``) back to a Python value.

    ``"True"`` → True, ``"['a', 'b']"`` → list, ``"12"`` → 12, anything unparsable stays a string.
    """
    if raw is None:
        return None
    text = raw.strip()
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        try:
            return loads_json(text, source="workflow_form value")  # bounded: 100,000 nested '[' stay text
        except ValueError:
            return raw


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true", "yes", "on")


@dataclass
class KaapanaRun:
    """One container invocation: paths, the run's conf and the environment."""

    workflow_dir: Path
    batch_name: str = "batch"
    operator_in_dir: str | None = None
    operator_out_dir: str = "kaapana-fhir"
    conf: dict[str, Any] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)

    # ---- conf -----------------------------------------------------------------
    @property
    def workflow_form(self) -> dict[str, Any]:
        return dict(self.conf.get("workflow_form") or {})

    @property
    def project_form(self) -> dict[str, Any]:
        return dict(self.conf.get("project_form") or {})

    @property
    def data_form(self) -> dict[str, Any]:
        return dict(self.conf.get("data_form") or {})

    @property
    def run_id(self) -> str:
        return self.env.get("RUN_ID") or self.workflow_dir.name

    @property
    def dag_id(self) -> str:
        return self.env.get("DAG_ID", "")

    def param(self, name: str, default: Any = None) -> Any:
        """A parameter: env ``NAME`` (operator env or workflow_form override) → ``workflow_form[name]`` →
        ``conf[name]`` (trigger-rule confs are flat) → ``default``."""
        raw = self.env.get(name.upper())
        if raw not in (None, ""):
            return parse_env_value(raw)
        for source in (self.workflow_form, self.conf):
            if source.get(name) not in (None, ""):
                return source[name]
        return default

    def flag(self, name: str, default: bool = False) -> bool:
        return _bool(self.param(name, default))

    def series_identifiers(self) -> list[str]:
        """Series UIDs the run was started for: ``data_form.identifiers`` (UI / PACS-fetch trigger rules) or
        the flat ``seriesInstanceUID`` of an incoming-DICOM conf."""
        ids = self.data_form.get("identifiers") or []
        if isinstance(ids, str):
            ids = [ids]
        uid = self.conf.get("seriesInstanceUID")
        if uid and uid not in ids:
            ids = [*ids, uid]
        return [str(i) for i in ids]

    # ---- endpoints --------------------------------------------------------------
    @property
    def services_namespace(self) -> str:
        return self.env.get("SERVICES_NAMESPACE", "services")

    def fhir_base_url(self) -> str:
        return str(self.param("fhir_base_url") or DEFAULT_FHIR_URL.format(ns=self.services_namespace))

    def fhir_token(self) -> str | None:
        return self.env.get("FHIR_TOKEN") or None

    def dicomweb_url(self) -> str:
        return str(
            self.param("dicomweb_url")
            or self.env.get("DICOM_WEB_FILTER_URL")
            or DEFAULT_DICOMWEB_URL.format(ns=self.services_namespace)
        )

    def dicomweb_token(self) -> str | None:
        return self.env.get("DICOMWEB_TOKEN") or None

    def s3_endpoint(self) -> str | None:
        url = self.env.get("S3_ENDPOINT_URL") or self.env.get("MINIO_URL")
        if url and not url.startswith(("http://", "https://")):
            url = f"http://{url}"
        return url or None

    def s3_credentials(self) -> S3Credentials:
        """Object-store credentials, chosen by configuration (``clients.s3.credentials_from_env``): in a
        Kaapana pod the project user (``KAAPANA_PROJECT_USER_*``, ``KAAPANA_CLIENT_SECRET``, ``KEYCLOAK_URL``)
        for Keycloak + MinIO STS; static ``S3_ACCESS_KEY``/``S3_SECRET_KEY`` elsewhere."""
        from kaapana_fhir.clients.s3 import credentials_from_env

        return credentials_from_env(self.env)

    def project_bucket(self) -> str | None:
        """The project's bucket (``project_form.s3_bucket``); never hard-coded."""
        return self.param("bucket") or self.project_form.get("s3_bucket") or None

    # ---- files ------------------------------------------------------------------
    @property
    def batch_dir(self) -> Path:
        return self.workflow_dir / self.batch_name

    def batch_elements(self) -> list[Path]:
        """Batch-element folders (one per series), sorted."""
        if not self.batch_dir.is_dir():
            return []
        return sorted(p for p in self.batch_dir.iterdir() if p.is_dir())

    def element_input(self, element: Path) -> Path:
        return element / self.operator_in_dir if self.operator_in_dir else element

    def element_output(self, element: Path) -> Path:
        return element / self.operator_out_dir

    def input_files(self, *suffixes: str) -> dict[str, list[Path]]:
        """Files with one of ``suffixes`` (case-insensitive; all files if none given) per batch element
        (element folder name → files), plus batch-level ``$WORKFLOW_DIR/$OPERATOR_IN_DIR`` under key ``""``.
        Elements without matching files are left out."""
        found: dict[str, list[Path]] = {}
        roots: list[tuple[str, Path]] = [(e.name, self.element_input(e)) for e in self.batch_elements()]
        if self.operator_in_dir:
            roots.append(("", self.workflow_dir / self.operator_in_dir))
        for key, root in roots:
            if not root.is_dir():
                continue
            files = sorted(
                p
                for p in root.rglob("*")
                if p.is_file()
                and (not suffixes or p.name.lower().endswith(tuple(s.lower() for s in suffixes)))
            )
            if files:
                found[key] = files
        return found

    @property
    def out_dir(self) -> Path:
        """Batch-level output folder (``$WORKFLOW_DIR/$OPERATOR_OUT_DIR``)."""
        return self.workflow_dir / self.operator_out_dir

    def write_result(self, result: Mapping[str, Any]) -> Path:
        """Write ``result`` as JSON to ``$WORKFLOW_DIR/$OPERATOR_OUT_DIR/kaapana-fhir-result.json``."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / RESULT_FILE
        path.write_text(json.dumps(result, indent=2, sort_keys=True, default=str), encoding="utf-8")
        return path


def load_conf(workflow_dir: Path) -> dict[str, Any]:
    """``$WORKFLOW_DIR/conf/conf.json`` (empty dict if absent; a malformed file is a ConfigError)."""
    path = workflow_dir / "conf" / "conf.json"
    if not path.is_file():
        log.info("no %s; running with an empty conf", path)
        return {}
    return load_json_object(path, what="dag_run.conf", hint="Kaapana mounts dag_run.conf here")


def load(environ: Mapping[str, str] | None = None) -> KaapanaRun:
    """Read the container contract from ``environ`` (default ``os.environ``).

    Raises ConfigError when ``WORKFLOW_DIR`` is unset or not a directory.
    """
    env = dict(os.environ if environ is None else environ)
    wdir = env.get("WORKFLOW_DIR")
    if not wdir:
        raise ConfigError(
            "WORKFLOW_DIR is not set: `kaapana-run` runs inside a Kaapana processing container "
            "(KaapanaBaseOperator sets WORKFLOW_DIR, BATCH_NAME, OPERATOR_IN_DIR, OPERATOR_OUT_DIR)"
        )
    workflow_dir = Path(wdir)
    if not workflow_dir.is_dir():
        raise ConfigError(f"WORKFLOW_DIR={workflow_dir} is not a directory")
    return KaapanaRun(
        workflow_dir=workflow_dir,
        batch_name=env.get("BATCH_NAME") or "batch",
        operator_in_dir=env.get("OPERATOR_IN_DIR") or None,
        operator_out_dir=env.get("OPERATOR_OUT_DIR") or env.get("TASK_ID") or "kaapana-fhir",
        conf=load_conf(workflow_dir),
        env=env,
    )
