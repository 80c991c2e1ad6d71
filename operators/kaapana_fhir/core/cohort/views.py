"""The cohort's ViewDefinitions: the shipped views in ``data/views`` run by the SQL-on-FHIR runner.

The runner itself lives in :mod:`kaapana_fhir.core.sof` (validated, compiled ViewDefinitions; the official
SQL-on-FHIR v2 test suite passes). This module only finds and loads views by name and keeps the names the
cohort code, the web API and the tests import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kaapana_fhir.core.limits import load_json
from kaapana_fhir.core.sof import CompiledView, compile_view, reference_key, run_view
from kaapana_fhir.core.sof import ViewDefinitionError as ViewError
from kaapana_fhir.core.sof.fhirpath import check_syntax
from kaapana_fhir.exceptions import MappingError

VIEWS_DIR = Path(__file__).resolve().parents[2] / "data" / "views"

__all__ = ["VIEWS_DIR", "CompiledView", "ViewError", "check_syntax", "compile_view", "load_view", "reference_key",
           "run_view", "shipped_views"]


def shipped_views() -> list[str]:
    """Names of the views shipped in ``data/views``."""
    return sorted(p.stem for p in VIEWS_DIR.glob("*.json"))


def load_view(name_or_path: str | Path) -> dict[str, Any]:
    """A shipped view by name (``patient``) or a ViewDefinition JSON file path."""
    p = Path(name_or_path)
    if not p.suffix:
        p = VIEWS_DIR / f"{name_or_path}.json"
    if not p.is_file():
        raise ViewError(str(name_or_path), "", f"not found (shipped views: {', '.join(shipped_views())})")
    try:
        view = load_json(p)
    except (ValueError, MappingError) as exc:
        raise ViewError(str(p), "", f"not valid JSON: {exc}") from exc
    if not isinstance(view, dict):
        raise ViewError(str(p), "", "a ViewDefinition must be a JSON object")
    return view
