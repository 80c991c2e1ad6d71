"""Radiomics features of the shipped lung1 crop with the shipped settings, as JSON (parity of pyradiomics builds).

``.ci/check-processing-image.sh`` runs this with the processing image's Python 3.12 venv (pyradiomics-bhklab)
and with the dev venv (pyradiomics 3.0.1, the build the project's radiomics tests were written against) and
compares the numbers. Usage: ``python radiomics_features.py SETTINGS.yaml IMAGE.nrrd LABEL.nrrd OUT.json``.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path


def features(settings: Path, image: Path, label: Path) -> dict[str, float]:
    import radiomics
    from radiomics import featureextractor

    radiomics.setVerbosity(logging.ERROR)
    extractor = featureextractor.RadiomicsFeatureExtractor(str(settings))
    out = extractor.execute(str(image), str(label))
    return {k: float(v) for k, v in out.items() if not k.startswith("diagnostics_")}


def main(argv: list[str]) -> int:
    settings, image, label, dest = (Path(a) for a in argv)
    dest.write_text(json.dumps(features(settings, image, label), indent=1, sort_keys=True), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
