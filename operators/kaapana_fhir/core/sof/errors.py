"""Errors of the SQL-on-FHIR runner."""

from __future__ import annotations

from kaapana_fhir.exceptions import MappingError


class ViewDefinitionError(MappingError):
    """A ViewDefinition breaks the ViewDefinition structure (names the view and the JSON path of the element),
    or a resource breaks one of the view's rules at run time (names the view, column and resource)."""

    def __init__(self, view: str, where: str, message: str) -> None:
        self.view = view
        self.where = where
        loc = f" at {where}" if where else ""
        super().__init__(f"ViewDefinition {view!r}{loc}: {message}")
