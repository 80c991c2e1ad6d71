"""docs/mapping-reference.md is generated from the mapping JSON schema and must be up to date."""

from __future__ import annotations

from pathlib import Path

from kaapana_fhir.core.tables.mapping import SCHEMA, UNDOCUMENTED
from kaapana_fhir.core.tables.reference import reference_markdown

PAGE = Path(__file__).resolve().parents[4] / "docs" / "mapping-reference.md"


def test_every_schema_key_is_documented() -> None:
    assert UNDOCUMENTED == []


def test_reference_page_is_up_to_date() -> None:
    assert PAGE.read_text("utf-8") == reference_markdown(SCHEMA), \
        "docs/mapping-reference.md is stale: run `python tools/gen_mapping_reference.py`"


def test_every_top_level_key_appears_in_the_page() -> None:
    text = PAGE.read_text("utf-8")
    for key in SCHEMA["properties"]:
        assert f"| `{key}` |" in text
