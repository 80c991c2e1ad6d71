"""A Kaapana 0.6.0 processing-container pod, built from the facts of its source and run locally.

Facts (Kaapana tag 0.6.0; paths in docs/kaapana.md):

* ``KaapanaBaseOperator.__init__``: env = ``SERVICES_NAMESPACE``, ``ADMIN_NAMESPACE``, the platform URLs read
  with ``os.environ[...]`` (:data:`PLATFORM_ENV`; KeyError when unset), ``OPERATOR_IN_DIR`` = ``str(...)``
  only when the operator has an input dir, then the operator's ``env_vars`` (they win).
* ``execute``: ``CUDA_VISIBLE_DEVICES`` (``""`` without GPU); every ``workflow_form`` key as
  ``key.upper() = str(value)`` (overrides ``env_vars``); then ``RUN_ID``, ``DAG_ID``, ``TASK_ID``,
  ``WORKFLOW_DIR`` (``<processing dir>/<run_id>``), ``BATCH_NAME``, ``OPERATOR_OUT_DIR``,
  ``BATCHES_INPUT_DIR`` (``<workflow dir>/<batch name>``) override everything; the whole ``dag_run.conf``
  goes into a ConfigMap mounted read-only at ``$WORKFLOW_DIR/conf/conf.json``; secret env
  ``KAAPANA_PROJECT_USER_PASSWORD``, ``KAAPANA_PROJECT_USER_NAME``, ``KAAPANA_CLIENT_SECRET``.
* ``task_api`` ``KubernetesRunner.run``: the container gets the image and ``command`` of a task template that
  has none (``None``), no ``args``: the image's ENTRYPOINT + CMD run. Env list = secrets, then the env vars.
* ``_monitor_task_run``: exit code 126 → ``AirflowSkipException`` (skipped); OOMKilled or any other
  non-zero → failed. Container operators push no XCom.

The local run maps the processing mount (``/kaapana/mounted/data``) to ``workflow_root``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
PROCESSING_DOCKERFILE = REPO / "docker" / "kaapana-fhir" / "processing-containers" / "kaapana-fhir" / "Dockerfile"
#: read with os.environ[...] by KaapanaBaseOperator.__init__ (the Airflow pod's env)
PLATFORM_ENV = (
    "KEYCLOAK_URL",
    "KUBE_HELM_URL",
    "OPENSEARCH_URL",
    "DICOM_WEB_FILTER_URL",
    "NOTIFICATION_URL",
    "AII_URL",
    "KAAPANA_BACKEND_URL",
    "MINIO_URL",
)
SECRET_ENV = ("KAAPANA_PROJECT_USER_PASSWORD", "KAAPANA_PROJECT_USER_NAME", "KAAPANA_CLIENT_SECRET")
PROCESSING_WORKFLOW_DIR = "/kaapana/mounted/data"
AIRFLOW_WORKFLOW_DIR = "/kaapana/mounted/workflows/data"
SKIP_EXIT_CODE = 126


def init_env(
    *,
    platform: Mapping[str, str],
    services_namespace: str,
    admin_namespace: str,
    operator_in_dir: str | None,
    has_in_dir: bool,
    env_vars: Mapping[str, str] | None,
) -> dict[str, str]:
    """The env ``KaapanaBaseOperator.__init__`` stores (``self.env_vars``)."""
    env = {"SERVICES_NAMESPACE": str(services_namespace), "ADMIN_NAMESPACE": str(admin_namespace)}
    for key in PLATFORM_ENV:
        env[key] = platform[key]  # KeyError at parse time, as in Kaapana
    if has_in_dir:
        env["OPERATOR_IN_DIR"] = str(operator_in_dir)
    env.update(dict(env_vars or {}))
    return env


def execute_env(
    stored: Mapping[str, str],
    *,
    conf: Mapping[str, Any] | None,
    run_id: str,
    dag_id: str,
    task_id: str,
    batch_name: str,
    operator_out_dir: str,
    workflow_dir_root: str = PROCESSING_WORKFLOW_DIR,
) -> dict[str, str]:
    """The env ``KaapanaBaseOperator.execute`` hands to the pod."""
    env = dict(stored)
    env["CUDA_VISIBLE_DEVICES"] = ""
    form = (conf or {}).get("workflow_form")
    if form is not None:
        for key, value in form.items():
            env[key.upper()] = str(value)
    env.update(
        {
            "RUN_ID": run_id,
            "DAG_ID": dag_id,
            "TASK_ID": task_id,
            "WORKFLOW_DIR": f"{workflow_dir_root}/{run_id}",
            "BATCH_NAME": str(batch_name),
            "OPERATOR_OUT_DIR": str(operator_out_dir),
            "BATCHES_INPUT_DIR": f"{workflow_dir_root}/{run_id}/{batch_name}",
        }
    )
    return env


@dataclass
class Pod:
    """What ``task_api`` creates: image, command (always None), env list (secrets first), the conf map."""

    image: str
    env: list[tuple[str, str]]
    conf: dict[str, Any]
    run_id: str
    command: list[str] | None = None
    args: list[str] | None = None
    labels: dict[str, str] = field(default_factory=lambda: {"kaapana.ai/type": "processing-container"})

    def env_dict(self) -> dict[str, str]:
        """Env as the container sees it (Kubernetes: a later entry with the same name wins)."""
        out: dict[str, str] = {}
        for key, value in self.env:
            out[key] = value
        return out


def build_pod(*, image: str, env: Mapping[str, str], conf: Mapping[str, Any] | None,
              secrets: Mapping[str, str]) -> Pod:
    """The pod ``task_api`` creates from the env of :func:`execute_env` (the run id is its ``RUN_ID``):
    the secrets first, then that env; ``conf`` becomes the conf map."""
    secret_list = [(k, secrets[k]) for k in SECRET_ENV]
    return Pod(image=image, env=secret_list + list(env.items()), conf=dict(conf or {}), run_id=env["RUN_ID"])


def image_command(dockerfile: Path = PROCESSING_DOCKERFILE) -> list[str]:
    """ENTRYPOINT + CMD (exec form) of ``dockerfile``; a pod without command/args runs exactly this."""
    entry: list[str] = []
    cmd: list[str] = []
    for raw in dockerfile.read_text(encoding="utf-8").splitlines():
        word, _, rest = raw.strip().partition(" ")
        if word.upper() == "ENTRYPOINT":
            entry = json.loads(rest)
        elif word.upper() == "CMD":
            cmd = json.loads(rest)
    return entry + cmd


@dataclass
class PodOutcome:
    exit_code: int
    state: str  # "success" | "skipped" | "failed"
    stdout: str
    stderr: str
    result: dict[str, Any]


def run_pod(pod: Pod, workflow_root: Path, *, timeout: float = 900) -> PodOutcome:
    """Run ``pod`` locally: conf map written to ``<root>/<run_id>/conf/conf.json``, the processing mount
    ``/kaapana/mounted/data`` mapped to ``workflow_root``, the image command run with the pod env only."""
    if pod.command is not None or pod.args is not None:
        raise AssertionError("task_api builds the container without command/args")
    run_dir = workflow_root / pod.run_id
    (run_dir / "conf").mkdir(parents=True, exist_ok=True)
    (run_dir / "conf" / "conf.json").write_text(json.dumps(pod.conf, indent=4, sort_keys=True), encoding="utf-8")
    env = {
        k: v.replace(PROCESSING_WORKFLOW_DIR, str(workflow_root)) if k in ("WORKFLOW_DIR", "BATCHES_INPUT_DIR") else v
        for k, v in pod.env_dict().items()
    }
    # the image's own env (base-python-cpu puts its venv first on PATH)
    bindir = str(Path(sys.executable).parent)
    env.update({"PATH": os.pathsep.join([bindir, "/usr/bin", "/bin"]), "HOME": str(workflow_root), "LANG": "C.UTF-8"})
    command = image_command()
    exe = shutil.which(command[0], path=env["PATH"])
    if exe is None:
        raise AssertionError(f"image command {command[0]!r} not installed in {bindir}")
    proc = subprocess.run([exe, *command[1:]], env=env, capture_output=True, text=True, timeout=timeout, check=False)
    state = "success" if proc.returncode == 0 else ("skipped" if proc.returncode == SKIP_EXIT_CODE else "failed")
    out_dir = run_dir / env["OPERATOR_OUT_DIR"]
    result_file = out_dir / "kaapana-fhir-result.json"
    result = json.loads(result_file.read_text(encoding="utf-8")) if result_file.is_file() else {}
    return PodOutcome(proc.returncode, state, proc.stdout, proc.stderr, result)
