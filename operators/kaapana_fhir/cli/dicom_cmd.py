"""``kaapana-fhir dicom-to-fhir``: DICOM studies (PACS via DICOMweb, or files) → FHIR, or a transaction Bundle.

Examples::

    kaapana-fhir dicom-to-fhir --dicomweb http://pacs/dicom-web --series 1.2.3 --fhir http://fhir/fhir
    kaapana-fhir dicom-to-fhir --dicomweb http://pacs/dicom-web --study 1.2.3 --study 1.2.4 --out bundle.json
    kaapana-fhir dicom-to-fhir --dicomweb http://pacs/dicom-web --all --cursor backfill.cursor --fhir http://fhir/fhir
    kaapana-fhir dicom-to-fhir --dicomweb http://pacs/dicom-web --since 2020-01-01 --until 2020-12-31 \\
        --modality CT,MR --fhir http://fhir/fhir
    kaapana-fhir dicom-to-fhir --files ./dicom-folder --out bundle.json

Options that take several values accumulate when repeated (``--study A --study B`` keeps both;
``--modality CT --modality MR`` equals ``--modality CT,MR``).

The result (counts, ids, failed studies, issues ``{tag, value, rule}``, skipped files) is printed as JSON on
stdout; exit code 1 when a study failed (the other studies are still written), or with ``--strict`` when a file
was skipped as not DICOM.
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
    src.add_argument("--files", action="extend", nargs="+", default=[], metavar="PATH",
                     help="DICOM files or folders (no PACS); repeatable")
    sel = p.add_argument_group("what to read from the PACS (with --dicomweb)")
    sel.add_argument("--study", action="extend", nargs="+", default=[], metavar="UID",
                     help="StudyInstanceUIDs; repeatable")
    sel.add_argument("--series", action="extend", nargs="+", default=[], metavar="UID",
                     help="SeriesInstanceUIDs; their whole studies are synced; repeatable")
    sel.add_argument("--all", action="store_true", help="backfill every study of the PACS")
    sel.add_argument("--since", metavar="DATE", help="backfill studies with StudyDate on or after DATE (YYYY-MM-DD)")
    sel.add_argument("--until", metavar="DATE", help="backfill studies with StudyDate on or before DATE")
    sel.add_argument("--modality", action="append", default=[], metavar="CT,MR",
                     help="backfill only studies with these modalities (ModalitiesInStudy); repeatable")
    sel.add_argument("--cursor", metavar="FILE",
                     help="resumable backfill position: a re-started backfill skips the studies already written")
    sel.add_argument("--page-size", type=int, default=500, help="QIDO-RS limit per page of a backfill listing")
    sel.add_argument("--batch-size", type=int, default=200, help="studies per backfill batch")
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
    p.add_argument("--profile", choices=["mii", "core"], default="mii",
                   help="mii (default): MII KDS Bildgebung profiles and extensions; core: plain FHIR R4")
    p.add_argument("--no-dose", action="store_true", help="do not map X-Ray Radiation Dose SRs to Observations")
    p.add_argument("--wado", choices=["auto", "always", "never"], default="auto",
                   help="WADO-RS metadata per series (default: only when QIDO cannot give what the output needs)")
    p.add_argument("--missing-series", choices=["fail", "skip"], default="fail")
    p.add_argument("--workers", type=int, default=4, help="concurrent studies (PACS reads and FHIR writes)")
    p.add_argument("--strict", action="store_true", help="exit 1 when a file was skipped as not DICOM")
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


def modalities(values: list[str]) -> list[str]:
    """``["CT,MR", "PT"]`` → ``["CT", "MR", "PT"]`` (repeated and comma-separated values accumulate)."""
    out: list[str] = []
    for v in values:
        for m in v.replace(";", ",").split(","):
            m = m.strip().upper()
            if m and m not in out:
                out.append(m)
    return out


def run(args: argparse.Namespace) -> int:
    from kaapana_fhir.clients.dicomweb import DicomWeb
    from kaapana_fhir.clients.fhir import FhirClient
    from kaapana_fhir.flows.dicom_to_fhir.flow import SyncResult, backfill, sync_files, sync_studies
    from kaapana_fhir.flows.dicom_to_fhir.params import DicomToFhirParams

    window = bool(args.all or args.since or args.until or args.modality)
    if bool(args.dicomweb) == bool(args.files):
        raise ConfigError("give exactly one source: --dicomweb URL (with --study/--series/--all/--since) "
                          "or --files PATH...")
    if bool(args.fhir) == bool(args.out):
        raise ConfigError("give exactly one target: --fhir URL or --out bundle.json")
    from kaapana_fhir.core.limits import check_output_paths

    check_output_paths({"--out": args.out, "--result": args.result}, {f"--files {f}": f for f in args.files or []})
    if args.dicomweb and not (args.study or args.series or window):
        raise ConfigError("--dicomweb needs --study UID, --series UID, --all, or a window (--since/--until/--modality)")
    if window and (args.study or args.series):
        raise ConfigError("--all/--since/--until/--modality select studies themselves; do not combine with "
                          "--study/--series")
    if args.files and (window or args.study or args.series):
        raise ConfigError("--study/--series/--all/--since/--until/--modality need --dicomweb, not --files")
    if args.workers < 1:
        raise ConfigError(f"--workers {args.workers}: must be at least 1")
    params = DicomToFhirParams.from_cli(args)
    options = params.mapping_options(_issuers(args.issuer_system))
    try:
        fhir = FhirClient(args.fhir) if args.fhir else None
        dicomweb = DicomWeb(args.dicomweb) if args.dicomweb else None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    result: SyncResult
    if dicomweb is not None and window:
        result = backfill(dicomweb, fhir, since=args.since, until=args.until, modalities=modalities(args.modality),
                          cursor=args.cursor, options=options, wado=params.wado, workers=args.workers,
                          batch_size=args.batch_size, page_size=args.page_size)
    elif dicomweb is not None:
        result = sync_studies(dicomweb, fhir, study_uids=args.study, series_uids=args.series, options=options,
                              wado=params.wado, missing=params.missing_series, workers=args.workers)
    else:
        result = sync_files(args.files, fhir, options=options, workers=args.workers)
    bundle = result.bundle
    if args.out:
        if bundle is None:  # a backfill into a file: the bundle of each batch is not kept
            raise ConfigError("--out works with --study/--series/--files; a backfill writes to --fhir")
        Path(args.out).write_text(json.dumps(bundle, indent=1), encoding="utf-8")
        log.info("wrote transaction Bundle with %d entries to %s", len(bundle["entry"]), args.out)
    text = json.dumps(result.as_dict(), indent=1)
    if args.result:
        Path(args.result).write_text(text, encoding="utf-8")
    sys.stdout.write(text + "\n")
    for f in result.failed:
        log.error("%s", f["error"])
    if result.failed:
        return 1
    if args.strict and result.skipped_files:
        log.error("--strict: %d files were skipped as not DICOM", len(result.skipped_files))
        return 1
    return 0
