"""``kaapana-fhir``: the command line of the package (researchers outside Kaapana, the demo,
Kaapana processing containers).

Each flow registers its subcommands from its own module (``SUBCOMMAND_MODULES``); a module exposes
``register(subparsers)`` and sets ``func`` on its parsers. Exit codes: 0 ok, 1 error (message on stderr,
naming what to fix), 2 usage error, 126 "nothing to do" (Kaapana skips the task).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from kaapana_fhir import __version__
from kaapana_fhir.exceptions import KaapanaFhirError

SUBCOMMAND_MODULES = (
    "kaapana_fhir.cli.stack_cmd",
    "kaapana_fhir.cli.dicom_cmd",
    "kaapana_fhir.cli.tables_cmd",
    "kaapana_fhir.cli.radiomics_cmd",
    "kaapana_fhir.kaapana.entry",
    "kaapana_fhir.cli.cohort_cmd",
    "kaapana_fhir.cli.view_cmd",
)

log = logging.getLogger("kaapana_fhir.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kaapana-fhir", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"kaapana-fhir {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except KaapanaFhirError as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
