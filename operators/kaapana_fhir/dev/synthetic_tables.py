"""Synthetic clinical tables for demos, tests and benchmarks (random values; never real patient rows).

:func:`synthetic_lung1_csv` follows the NSCLC-Radiomics "Lung1" clinical column layout with values drawn
from a seeded random generator, so the demo can pair it with DICOM of the same PatientIDs.
"""

from __future__ import annotations

import csv
import io
import random
from collections.abc import Iterable, Iterator

LUNG1_COLUMNS = ("PatientID", "age", "clinical.T.Stage", "Clinical.N.Stage", "Clinical.M.Stage",
                 "Overall.Stage", "Histology", "gender", "Survival.time", "deadstatus.event")
_HISTOLOGY = ("adenocarcinoma", "large cell", "squamous cell carcinoma", "nos", "NA")
_STAGE = ("I", "II", "IIIa", "IIIb", "NA")


def lung1_rows(patient_ids: Iterable[str], seed: int = 0) -> Iterator[list[str]]:
    """One synthetic Lung1-schema row per patient id (values random but reproducible for ``seed``)."""
    rng = random.Random(seed)
    for pid in patient_ids:
        age = "NA" if rng.random() < 0.03 else f"{rng.uniform(40, 90):.4f}"
        yield [pid, age, str(rng.randint(1, 4)), str(rng.randint(0, 3)), str(rng.choice((0, 0, 0, 1))),
               rng.choice(_STAGE), rng.choice(_HISTOLOGY), rng.choice(("male", "female")),
               str(rng.randint(30, 4000)), str(rng.choice((0, 1, 1)))]


def synthetic_lung1_csv(patient_ids: Iterable[str], seed: int = 0) -> str:
    """A Lung1-schema CSV (header + one row per id) with synthetic values, e.g. ids ``LUNG1-001`` …"""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(LUNG1_COLUMNS)
    w.writerows(lung1_rows(patient_ids, seed))
    return buf.getvalue()


def lung1_ids(n: int, prefix: str = "LUNG1-") -> list[str]:
    """``LUNG1-001`` … style patient ids."""
    width = max(3, len(str(n)))
    return [f"{prefix}{i:0{width}d}" for i in range(1, n + 1)]
