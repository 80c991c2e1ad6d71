"""Helpers of the packaging tests: find helm, render charts, lay out the DAG image from its Dockerfile."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DAG_DOCKERFILE = REPO / "docker" / "dag" / "Dockerfile"
PC_DOCKERFILE = REPO / "docker" / "processing-container" / "Dockerfile"
STUB_PLUGIN = Path(__file__).resolve().parent / "kaapana_plugin_stub"
DAG_INSTALLER_STUB = REPO / "tests" / "fixtures" / "helm" / "dag-installer-chart"
#: Kaapana's build_helper/helm/helm_chart.py IMAGE_PATTERN (also used by the base installer to pre-pull)
IMAGE_PATTERN = (
    r'^\s*-?\s*image\s*[:=]\s*f?["\']\{DEFAULT_REGISTRY\}/(?P<image_name>[^:]+):(?P<version>[^"\']+)["\']'
)
#: top-level folders the base installer accepts under /kaapana/tmp/
INSTALLER_TOP_LEVEL = {"plugins", "dags", "mounted_scripts", "extensions"}


def helm_binary() -> str:
    """Path of helm; fails in CI (CI=true) when it is missing, skips otherwise."""
    candidates = [shutil.which("helm")]
    for base in (os.environ.get("GOBIN"), os.path.expanduser("~/go/bin"), "/root/go/bin"):
        if base:
            candidates.append(os.path.join(base, "helm"))
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return c
    msg = "helm not found (install: bash .ci/install-helm.sh)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(msg)
    pytest.skip(msg)


def helm(*args: str) -> str:
    proc = subprocess.run([helm_binary(), *args], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise AssertionError(
            f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc.stdout


def render(
    chart: Path, *set_args: str, values: dict[str, Any] | None = None, tmp: Path | None = None
) -> list[dict]:
    """``helm template`` → list of rendered objects."""
    args = ["template", "rel", str(chart)]
    for s in set_args:
        args += ["--set", s]
    if values is not None:
        assert tmp is not None
        vf = tmp / "values-override.yaml"
        vf.write_text(yaml.safe_dump(values), encoding="utf-8")
        args += ["-f", str(vf)]
    return [d for d in yaml.safe_load_all(helm(*args)) if d]


def workflow_chart_with_deps(tmp: Path) -> Path:
    """The workflow chart with the dag-installer stand-in in charts/ (what `helm dep up` does in Kaapana)."""
    dst = tmp / "kaapana-fhir-workflow"
    shutil.copytree(REPO / "helm" / "kaapana-fhir-workflow", dst)
    (dst / "charts").mkdir(exist_ok=True)
    shutil.copytree(DAG_INSTALLER_STUB, dst / "charts" / "dag-installer-chart")
    return dst


@dataclass
class Dockerfile:
    base: str
    labels: dict[str, str]
    copies: list[tuple[str, str]]


def parse_dockerfile(path: Path) -> Dockerfile:
    base, labels, copies = "", {}, []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            base = rest.split()[0]
        elif word == "LABEL":
            for m in re.finditer(r'(\w+)="([^"]*)"', rest):
                labels[m.group(1)] = m.group(2)
        elif word == "COPY":
            parts = [p for p in rest.split() if not p.startswith("--")]
            copies += [(src, parts[-1]) for src in parts[:-1]]
    return Dockerfile(base, labels, copies)


def lay_out_image(dockerfile: Path, root: Path, context: Path = REPO) -> Path:
    """Apply the COPY lines of ``dockerfile`` (context = repo root) under ``root``; returns ``root``.

    Docker semantics used here: a glob source copies each match into a ``dest/`` directory; a directory
    source copies its *contents* to ``dest``. ``__pycache__`` is left out (as by .dockerignore).
    """
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for src, dest in parse_dockerfile(dockerfile).copies:
        target = root / dest.lstrip("/")
        matches = sorted(context.glob(src))
        assert matches, f"{dockerfile}: COPY {src} matches nothing in {context}"
        for m in matches:
            if m.is_dir():
                shutil.copytree(m, target, ignore=ignore, dirs_exist_ok=True)
            elif dest.endswith("/") or len(matches) > 1:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(m, target / m.name)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(m, target)
    return root
