"""Helpers of the packaging tests: helm, Kaapana 0.6.0's build rewrite reproduced, the image layouts.

Facts reproduced here (Kaapana tag 0.6.0, see docs/kaapana.md):

* ``build-scripts/build_helper/container/container.py``: an image is built with ``docker build -f Dockerfile .``
  in the Dockerfile's OWN folder and tagged ``<default registry>/<LABEL IMAGE>:<version>``, the version being
  ``git describe`` of the repository that holds the Dockerfile (the platform version when the extension sits in
  the Kaapana tree); the EDK's ``build_image.sh`` tags with ``$KAAPANA_BUILD_VERSION``.
* ``build-scripts/build_helper/helm/helm_chart.py`` ``build``: the chart is copied, every ``Chart.yaml`` line
  starting with ``version:`` becomes ``version: "<platform build version>"`` (``_update_chart_version``),
  ``requirements.yaml`` loses its ``repository:`` lines (``_update_requirements``), and each dependency (found by
  chart name) is built the same way into ``charts/<name>``.
* Operator images: ``*.py`` files whose name contains "operator" are scanned with ``IMAGE_PATTERN``; a
  ``{KAAPANA_BUILD_VERSION}`` version means the chart's version.
"""

from __future__ import annotations

import importlib.util
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
EXTENSION = REPO / "docker" / "kaapana-fhir"
WORKFLOW_CHART = EXTENSION / "extension" / "kaapana-fhir-workflow"
DAG_DOCKERFILE = EXTENSION / "extension" / "docker" / "Dockerfile"
PC_DOCKERFILE = EXTENSION / "processing-containers" / "kaapana-fhir" / "Dockerfile"
DAG_INSTALLER_STUB = REPO / "tests" / "fixtures" / "helm" / "dag-installer-chart"
#: Kaapana's build_helper/helm/helm_chart.py IMAGE_PATTERN (also used by the base installer to pre-pull)
IMAGE_PATTERN = (
    r'^\s*-?\s*image\s*[:=]\s*f?["\']\{DEFAULT_REGISTRY\}/(?P<image_name>[^:]+):(?P<version>[^"\']+)["\']'
)
#: top-level folders the base installer accepts under /kaapana/tmp/
INSTALLER_TOP_LEVEL = {"plugins", "dags", "mounted_scripts", "extensions"}
_spec = importlib.util.spec_from_file_location(
    "kaapana_fhir_build_layout", REPO / "docker" / "tools" / "build_layout.py"
)
assert _spec is not None and _spec.loader is not None
#: docker/tools/build_layout.py (generates the images' build contexts)
build_layout = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_layout)
#: Kaapana's own images our charts/operators reference (pushed by the platform build, same version)
PLATFORM_IMAGES = {"service-checker", "workflow-cleaner"}


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


def rendered_images(objs: list[dict]) -> list[str]:
    """Every container and init-container image of the rendered objects."""
    out: list[str] = []
    for o in objs:
        spec = (o.get("spec") or {}).get("template", {}).get("spec") or {}
        for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
            out.append(c["image"])
    return out


# ------------------------------------------------------------------------- the build rewrite
def rewrite_chart_version(chart_dir: Path, version: str) -> None:
    """``_update_chart_version``: lines starting with ``version:`` → ``version: "<version>"``."""
    path = chart_dir / "Chart.yaml"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text(
        "".join(f'version: "{version}"\n' if ln.startswith("version:") else ln for ln in lines), encoding="utf-8"
    )


def drop_repositories(chart_dir: Path) -> None:
    """``_update_requirements``: ``requirements.yaml`` without its ``repository:`` lines."""
    path = chart_dir / "requirements.yaml"
    if path.is_file():
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        path.write_text("".join(ln for ln in lines if "repository:" not in ln), encoding="utf-8")


def build_chart(chart: Path, target: Path, version: str, deps: dict[str, Path]) -> Path:
    """Kaapana's chart build of ``chart`` into ``target`` (dependencies by name from ``deps``)."""
    shutil.copytree(chart, target)
    rewrite_chart_version(target, version)
    drop_repositories(target)
    req_file = target / "requirements.yaml"
    reqs = yaml.safe_load(req_file.read_text()) if req_file.is_file() else {}
    for dep in (reqs or {}).get("dependencies", []):
        build_chart(deps[dep["name"]], target / "charts" / dep["name"], version, deps)
    return target


def dockerfile_labels(path: Path) -> dict[str, str]:
    labels: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("LABEL "):
            for m in re.finditer(r'(\w+)="([^"]*)"', line):
                labels[m.group(1)] = m.group(2)
    return labels


def pushed_images(extension: Path, registry: str, version: str) -> set[str]:
    """What the build pushes: one ``<registry>/<LABEL IMAGE>:<version>`` per Dockerfile (BUILD_IGNORE skips)."""
    out = set()
    for dockerfile in sorted(extension.rglob("Dockerfile")):
        labels = dockerfile_labels(dockerfile)
        if labels.get("BUILD_IGNORE", "False").lower() in ("true", "yes", "1"):
            continue
        out.add(f"{registry}/{labels['IMAGE']}:{version}")
    return out


def operator_images(root: Path, registry: str, version: str) -> set[str]:
    """Images named by ``*operator*.py`` files under ``root`` (IMAGE_PATTERN; ``{KAAPANA_BUILD_VERSION}``
    → ``version``)."""
    out = set()
    for path in root.rglob("*.py"):
        if "operator" not in path.name.lower():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            m = re.search(IMAGE_PATTERN, line)
            if m:
                tag = version if m.group("version") == "{KAAPANA_BUILD_VERSION}" else m.group("version")
                out.add(f"{registry}/{m.group('image_name')}:{tag}")
    return out


@dataclass
class Build:
    chart: Path
    pushed: set[str]
    version: str
    registry: str


def kaapana_build(tmp: Path, version: str = "0.6.0", registry: str = "registry.example.org/kaapana") -> Build:
    """Reproduce Kaapana's build of our extension: built chart in ``tmp`` and the set of pushed tags."""
    chart = build_chart(WORKFLOW_CHART, tmp / "kaapana-fhir-workflow", version,
                        {"dag-installer-chart": DAG_INSTALLER_STUB})
    return Build(chart, pushed_images(EXTENSION, registry, version), version, registry)


def platform_values(build: Build, **extra: str) -> tuple[str, ...]:
    """``--set`` values the platform passes to an extension chart."""
    base = {
        "global.registry_url": build.registry,
        "global.kaapana_build_version": build.version,
        "global.services_namespace": "services",
        "global.admin_namespace": "admin",
        "global.main_node_name": "kaapana-main",
        **extra,
    }
    return tuple(f"{k}={v}" for k, v in base.items())


# ------------------------------------------------------------------------- Dockerfiles
@dataclass
class Dockerfile:
    base: str
    labels: dict[str, str]
    copies: list[tuple[str, str]]


def parse_dockerfile(path: Path) -> Dockerfile:
    base, copies = "", []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            base = rest.split()[0]
        elif word == "COPY":
            parts = [p for p in rest.split() if not p.startswith("--")]
            copies += [(src, parts[-1]) for src in parts[:-1]]
    return Dockerfile(base, dockerfile_labels(path), copies)


def lay_out_image(dockerfile: Path, root: Path) -> Path:
    """Apply the COPY lines of ``dockerfile`` (context = the Dockerfile's own folder, as Kaapana builds) under
    ``root``; returns ``root``. Sources outside the folder fail (they would not be in the build context)."""
    context = dockerfile.parent
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for src, dest in parse_dockerfile(dockerfile).copies:
        assert ".." not in Path(src).parts, f"{dockerfile}: COPY {src} leaves the build context"
        target = root / dest.lstrip("/")
        matches = sorted(context.glob(src.rstrip("/")))
        assert matches, f"{dockerfile}: COPY {src} matches nothing in {context} (run docker/tools/build_layout.py)"
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
