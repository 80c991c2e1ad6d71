"""``kaapana-fhir radiomics`` (compute from files) and ``kaapana-fhir radiomics-to-fhir`` (map a result file)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kaapana_fhir.exceptions import ConfigError

if TYPE_CHECKING:
    from kaapana_fhir.core.radiomics.mapping import RadiomicsRun

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("radiomics", help="pyradiomics features of a DICOM SEG on a DICOM image series → FHIR")
    p.add_argument("--ct", required=True, help="directory of the image series (CT/MR DICOM files)")
    p.add_argument("--seg", required=True, help="DICOM SEG file")
    p.add_argument("--settings", help="pyradiomics parameter YAML (default: shipped default_settings.yaml)")
    p.add_argument("--preset", choices=["default", "all_image_types"], help="shipped settings preset")
    p.add_argument("--layout", choices=["members", "components"], default="members")
    p.add_argument("--patient-system", help="identifier system of PatientID (default as the DICOM flow)")
    _out_args(p)
    p.set_defaults(func=run_compute)

    q = sub.add_parser("radiomics-to-fhir", help="map a radiomics result file (Kaapana/pyradiomics/MITK)")
    q.add_argument("result", help="result file: PyRadiomicsOperator JSON, pyradiomics JSON/CSV, "
                                  "MITK CLGlobalImageFeatures XML / CSV (-head) / xq JSON")
    q.add_argument("--study", required=True, help="StudyInstanceUID of the segmented image")
    q.add_argument("--seg-series", required=True, help="SeriesInstanceUID of the SEG")
    q.add_argument("--seg-sop", help="SOPInstanceUID of the SEG (default: keyed by the SEG series UID)")
    q.add_argument("--patient-id", required=True, help="PatientID (0010,0020) of the image")
    q.add_argument("--patient-system", help="identifier system of the PatientID")
    q.add_argument("--image-series", help="SeriesInstanceUID of the segmented image")
    q.add_argument("--modality", default="CT", help="image modality (units: CT → HU, others unitless)")
    q.add_argument("--layout", choices=["members", "components"], default="members")
    _out_args(q)
    q.set_defaults(func=run_map)


def _out_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--fhir", help="FHIR base URL to write to")
    g.add_argument("--out", help="write a transaction Bundle JSON file instead")


def _emit(args: argparse.Namespace, run: RadiomicsRun, layout: str, extra: dict[str, Any]) -> int:
    from kaapana_fhir.clients.fhir import FhirClient
    from kaapana_fhir.core.bundle import transaction
    from kaapana_fhir.flows.radiomics.flow import entries_for, write_run

    if args.fhir:
        summary = write_run(FhirClient(args.fhir), run, layout=layout).as_dict()
    else:
        entries, mapped = entries_for(run, layout=layout)
        Path(args.out).write_text(json.dumps(transaction(entries, sort=False), indent=1, allow_nan=False))
        summary = {"groups": mapped.groups, "features": mapped.features, "absent": mapped.absent,
                   "resources": len(entries), "issues": mapped.issues, "out": args.out}
    summary.update(extra)
    for issue in summary.get("issues", [])[:20]:
        log.warning("issue: %s = %s (%s)", issue.get("tag"), issue.get("value"), issue.get("rule"))
    sys.stdout.write(json.dumps({k: v for k, v in summary.items() if k != "issues"} |
                                {"issue_count": len(summary.get("issues", []))}, default=str) + "\n")
    return 0


def run_compute(args: argparse.Namespace) -> int:
    from kaapana_fhir.flows.radiomics.flow import compute_from_files, resolve_settings

    if args.settings and args.preset:
        raise ConfigError("give either --settings or --preset, not both")
    settings = resolve_settings(args.settings, args.preset)
    res = compute_from_files(args.ct, args.seg, settings, patient_system=args.patient_system)
    log.info("computed %d features; image types %s; skipped %s", res.feature_count, res.computed_image_types,
             res.skipped_image_types)
    return _emit(args, res.run, args.layout, {"computed_image_types": res.computed_image_types,
                                              "skipped_image_types": res.skipped_image_types,
                                              "compute_issues": res.issues})


def run_map(args: argparse.Namespace) -> int:
    from kaapana_fhir.core.limits import check_output_paths
    from kaapana_fhir.flows.radiomics.flow import run_from_result_file

    check_output_paths({"--out": args.out}, {"result": args.result})

    run, issues, fmt = run_from_result_file(
        args.result, study_uid=args.study, seg_series_uid=args.seg_series, patient_value=args.patient_id,
        seg_sop_uid=args.seg_sop, modality=args.modality, image_series_uid=args.image_series,
        patient_system=args.patient_system)
    log.info("%s: format %s, %d segment(s)", args.result, fmt, len(run.segments))
    return _emit(args, run, args.layout, {"format": fmt, "parse_issues": issues})
