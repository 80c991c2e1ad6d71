"""Generate the build contexts of the Kaapana extension under ``docker/kaapana-fhir`` (``make kaapana-layout``).

Kaapana's build script (``build-scripts/build_helper/container/container.py``) and the EDK's
``build_image.sh`` run ``docker build`` in each Dockerfile's own folder, so every image needs its inputs
inside that folder. This script copies them there (all generated paths are git-ignored):

* ``extension/docker/files/dags/``: the DAG files and trigger rules of ``dags/`` plus the ``kaapana_fhir``
  package **without** ``dev/`` (local stack, demo, plain-Airflow runner) and ``cli/`` (the command line runs
  in the processing container, never in Airflow) and with an ``.airflowignore`` so
  Airflow does not parse package modules as DAG files;
* ``extension/docker/files/plugins/``: ``plugins/kaapana_fhir_plugin.py`` (copied to Airflow's plugins folder);
* ``processing-containers/kaapana-fhir/files/src/``: ``pyproject.toml``, ``README.md``, ``LICENSE``,
  ``NOTICE`` and ``operators/`` (``pip install --no-deps`` of the package in the image).

Usage: ``python docker/tools/build_layout.py [--extension-dir DIR]``; prints the generated folders.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXTENSION = REPO / "docker" / "kaapana-fhir"
#: package sub-folders that never go into the DAG image
DAG_IMAGE_EXCLUDED = ("dev", "cli")
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".pytest_cache", ".mypy_cache")


def _reset(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


def dag_image_files(extension: Path = EXTENSION, repo: Path = REPO) -> Path:
    """Fill ``<extension>/extension/docker/files/dags``; returns that folder."""
    out = extension / "extension" / "docker" / "files" / "dags"
    _reset(out)
    for src in sorted((repo / "dags").iterdir()):
        if src.is_file() and (src.suffix == ".py" or src.name.endswith("trigger_rule.json")):
            shutil.copy2(src, out / src.name)
    pkg_src = repo / "operators" / "kaapana_fhir"

    def ignore(folder: str, names: list[str]) -> set[str]:
        skip = set(_IGNORE(folder, names))
        if Path(folder) == pkg_src:
            skip |= {n for n in names if n in DAG_IMAGE_EXCLUDED}
        return skip

    shutil.copytree(pkg_src, out / "kaapana_fhir", ignore=ignore)
    # Airflow reads .airflowignore per folder (regexp syntax): nothing inside the package is a DAG file.
    (out / "kaapana_fhir" / ".airflowignore").write_text(".*\n", encoding="utf-8")
    # the Airflow plugin (explorer, API, extra links, macro) goes to Airflow's plugins folder; it imports the
    # kaapana_fhir package from the dags folder, which Airflow puts on sys.path
    plugins = extension / "extension" / "docker" / "files" / "plugins"
    _reset(plugins)
    for src in sorted((repo / "plugins").glob("*.py")):
        shutil.copy2(src, plugins / src.name)
    return out


def processing_image_files(extension: Path = EXTENSION, repo: Path = REPO) -> Path:
    """Fill ``<extension>/processing-containers/kaapana-fhir/files/src``; returns that folder."""
    out = extension / "processing-containers" / "kaapana-fhir" / "files" / "src"
    _reset(out)
    for name in ("pyproject.toml", "README.md", "LICENSE", "NOTICE"):
        shutil.copy2(repo / name, out / name)
    shutil.copytree(repo / "operators", out / "operators", ignore=_IGNORE)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--extension-dir", type=Path, default=EXTENSION, help="extension folder to fill")
    args = ap.parse_args(argv)
    for path in (dag_image_files(args.extension_dir), processing_image_files(args.extension_dir)):
        sys.stdout.write(f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
