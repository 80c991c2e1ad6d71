"""``kaapana-fhir dicom-to-fhir``: DICOM studies (PACS via DICOMweb, or files) → FHIR, or a transaction Bundle.

Examples::

    kaapana-fhir dicom-to-fhir --dicomweb http://pacs/dicom-web --series 1.2.3 --fhir http://fhir/fhir
    kaapana-fhir dicom-to-fhir --dicomweb http://pacs/dicom-web --study 1.2.3 1.2.4 --out bundle.json
    kaapana-fhir dicom-to-fhir --files ./dicom-folder --out bundle.json

The result (counts, ids, failed studies, issues ``{tag, value, rule}``) is printed as JSON on stdout;
exit code 1 when a study failed (the other studies are still written).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from kaapana_fhir.core.ids import DEFAULT_PATIENT_SYSTEM
from kaapana_fhir.exceptions import ConfigError

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dicom-to-fhir", help="DICOM studies (PACS or files) → Patient/ImagingStudy/Endpoint/Device",
                       description=__doc__.split("\n\n")[0])
    src = p.add_argument_group("source (one of)")
    src.add_argument("--dicomweb", metavar="URL", help="DICOMweb base URL of the PACS (QIDO/WADO-RS)")
    src.add_argument("--files", nargs="+", metavar="PATH", help="DICOM files or folders (no PACS)")
    p.add_argument("--study", nargs="+", default=[], metavar="UID", help="StudyInstanceUIDs (with --dicomweb)")
    p.add_argument("--series", nargs="+", default=[], metavar="UID",
                   help="SeriesInstanceUIDs; their whole studies are synced (with --dicomweb)")
    dst = p.add_argument_group("target (one of)")
    dst.add_argument("--fhir", metavar="URL", help="FHIR base URL to write to")
    dst.add_argument("--out", metavar="FILE", help="write the transaction Bundle to FILE instead (dry run)")
    p.add_argument("--patient-system", default=DEFAULT_PATIENT_SYSTEM,
                   help=f"identifier system of PatientID (0010,0020) (default {DEFAULT_PATIENT_SYSTEM})")
    p.add_argument("--issuer-system", action="append", default=[], metavar="ISSUER=URI",
                   help="map IssuerOfPatientID (0010,0021) to an identifier system (repeatable)")
    p.add_argument("--timezone", help="IANA zone for times without TimezoneOffsetFromUTC (0008,0201)")
    p.add_argument("--endpoint-address", help="Endpoint.address (default: the --dicomweb URL)")
    p.add_argument("--include-instances", action="store_true", help="write ImagingStudy.series.instance[]")
    p.add_argument("--no-device", action="store_true", help="do not write Device resources")
    p.add_argument("--wado", choices=["auto", "always", "never"], default="auto",
                   help="WADO-RS metadata of one instance per series (default: when QIDO lacks attributes)")
    p.add_argument("--missing-series", choices=["fail", "skip"], default="fail")
    p.add_argument("--result", metavar="FILE", help="also write the result JSON to FILE")
    p.set_defaults(func=run)


def _issuers(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        issuer, sep, uri = pair.partition("=")
        if not sep or not issuer.strip() or not uri.strip():
            raise ConfigError(f"--issuer-system {pair!r}: expected ISSUER=URI")
        out[issuer.strip()] = uri.strip()
    return out


def run(args: argparse.Namespace) -> int:
    from kaapana_fhir.clients.dicomweb import DicomWeb
    from kaapana_fhir.clients.fhir import FhirClient
    from kaapana_fhir.core.dicom.mapping import MappingOptions
    from kaapana_fhir.flows.dicom_to_fhir.flow import sync_files, sync_studies

    if bool(args.dicomweb) == bool(args.files):
        raise ConfigError("give exactly one source: --dicomweb URL (with --study/--series) or --files PATH...")
    if bool(args.fhir) == bool(args.out):
        raise ConfigError("give exactly one target: --fhir URL or --out bundle.json")
    if args.dicomweb and not (args.study or args.series):
        raise ConfigError("--dicomweb needs --study UID... or --series UID...")
    options = MappingOptions(patient_system=args.patient_system, issuer_systems=_issuers(args.issuer_system),
                             timezone=args.timezone, endpoint_address=args.endpoint_address,
                             include_instances=args.include_instances, include_device=not args.no_device)
    try:
        fhir = FhirClient(args.fhir) if args.fhir else None
        dicomweb = DicomWeb(args.dicomweb) if args.dicomweb else None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if dicomweb is not None:
        result = sync_studies(dicomweb, fhir, study_uids=args.study, series_uids=args.series, options=options,
                              wado=args.wado, missing=args.missing_series)
    else:
        result = sync_files(args.files, fhir, options=options)
    bundle = result.pop("bundle", None)
    if args.out:
        Path(args.out).write_text(json.dumps(bundle, indent=1), encoding="utf-8")
        log.info("wrote transaction Bundle with %d entries to %s", len(bundle["entry"]), args.out)
    text = json.dumps(result, indent=1)
    if args.result:
        Path(args.result).write_text(text, encoding="utf-8")
    sys.stdout.write(text + "\n")
    for f in result["failed"]:
        log.error("%s", f["error"])
    return 1 if result["failed"] else 0

