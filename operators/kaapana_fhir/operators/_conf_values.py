"""Small parsers for values that arrive through ``dag_run.conf`` / templated operator fields."""

from __future__ import annotations

from typing import Any


def as_uid_list(value: Any) -> list[str]:
    """A UID list from a list, a single UID, a comma/whitespace separated string or None."""
    if value is None or value == "" or value == "None":
        return []
    if isinstance(value, str):
        return [v for v in value.replace(",", " ").split() if v]
    return [str(v).strip() for v in value if str(v).strip()]
