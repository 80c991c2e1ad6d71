"""``mapping init``: a starting mapping as YAML text from a table, a REDCap dictionary or a CDISC ODM file (pure).

:func:`init_mapping` picks the route by its inputs:

* ``dictionary`` given (``--redcap DICT``): derived from the REDCap data dictionary
  (:func:`kaapana_fhir.core.tables.redcap.derive_mapping`), restricted to the export's header when an export is
  given too; the project name (identifier and code systems) comes from ``project`` or the dictionary's file name;
* an ODM XML file: derived from its MetaDataVersion (:func:`kaapana_fhir.core.tables.odm.derive_mapping`);
* any other table: profiled and matched against the code catalogue (:mod:`kaapana_fhir.core.tables.suggest`).

The YAML starts with comments: the column profile and notes about quirks found. Guesses carry ``review`` markers
and unknown codes ``TODO``; ``import-table`` refuses the mapping until none is left.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kaapana_fhir.core.tables import suggest
from kaapana_fhir.core.tables.engine import check_ready
from kaapana_fhir.core.tables.mapping import validate_mapping
from kaapana_fhir.core.tables.reader import guess_format, open_table
from kaapana_fhir.exceptions import ConfigError


@dataclass
class InitResult:
    mapping: dict[str, Any]
    yaml: str
    report: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def todo(self) -> list[str]:
        """What the user still has to fill in or confirm (empty: ready to import)."""
        try:
            check_ready(self.mapping)
        except ConfigError as exc:
            return list(getattr(exc, "items", [str(exc)]))
        return []


def init_mapping(data: bytes | None, *, name: str, dictionary: str | None = None, dictionary_name: str = "",
                 project: str | None = None, local_codes: bool = False) -> InitResult:
    """A starting mapping for ``data`` (a table's bytes; may be None with a REDCap ``dictionary``). ``local_codes``
    (tables only): columns the catalogue does not know get codes of a project-local code system, not ``TODO``."""
    if dictionary is not None:
        from kaapana_fhir.core.tables.redcap import derive_mapping, project_name_of

        header = open_table(data, name=name).header if data else None
        proj = project or project_name_of(dictionary_name or name)
        mapping = derive_mapping(dictionary, header=header, name=proj, project=proj, review=True)
        notes = list(mapping.pop("x_notes", []))
        _check(mapping, name)
        return InitResult(mapping, suggest.to_yaml(mapping, notes=notes), notes=notes)
    if data is None:
        raise ConfigError("mapping init needs a table file or --redcap DICTIONARY (rule: an input is required)")
    if guess_format(name, data[:512]) == "odm":
        from kaapana_fhir.core.tables.odm import derive_mapping as derive_odm

        mapping = derive_odm(data, name=name, review=True)
        notes = list(mapping.pop("x_notes", []))
        _check(mapping, name)
        return InitResult(mapping, suggest.to_yaml(mapping, notes=notes), notes=notes)
    table = open_table(data, name=name)
    profiles, nrows = suggest.profile_table(table)
    mapping = suggest.suggest_mapping(table, profiles=profiles, nrows=nrows, local_codes=local_codes)
    report = suggest.profile_report(profiles, nrows)
    _check(mapping, name)
    return InitResult(mapping, suggest.to_yaml(mapping, report=report), report=report)


def _check(mapping: dict[str, Any], name: str) -> None:
    errors = validate_mapping(mapping, source=f"init:{name}")
    if errors:  # a bug of ours, never the user's: say so clearly
        raise ConfigError(f"generated mapping for {name} is not valid: {'; '.join(errors[:5])} "
                          "(rule: mapping init writes schema-valid mappings; please report)")
