"""Regenerate docs/mapping-reference.md from the table-mapping JSON schema (dev tooling, not packaged).

Usage: ``python tools/gen_mapping_reference.py [--check]``; ``--check`` exits 1 when the page is stale.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kaapana_fhir.core.tables.mapping import SCHEMA, UNDOCUMENTED
from kaapana_fhir.core.tables.reference import reference_markdown

PAGE = Path(__file__).resolve().parents[1] / "docs" / "mapping-reference.md"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--check", action="store_true", help="fail if the page is not up to date")
    args = ap.parse_args(argv)
    if UNDOCUMENTED:
        sys.stderr.write(f"schema keys without a description: {UNDOCUMENTED}\n")
        return 1
    text = reference_markdown(SCHEMA)
    if args.check:
        current = PAGE.read_text("utf-8") if PAGE.exists() else ""
        if current != text:
            sys.stderr.write(f"{PAGE} is stale; run: python tools/gen_mapping_reference.py\n")
            return 1
        return 0
    PAGE.parent.mkdir(parents=True, exist_ok=True)
    PAGE.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
