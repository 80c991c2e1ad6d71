#!/usr/bin/env bash
# Proves that the kaapana-fhir processing image's Python steps work on Kaapana 0.6's base image Python (3.12),
# without a Docker engine:
#   1. generate the build contexts (docker/tools/build_layout.py, as `make kaapana-layout`);
#   2. a FRESH venv from pyenv's Python 3.12.1 (stands in for /opt/venv of local-only/base-python-cpu), with
#      the base image's own pins that matter to us installed first (facts from Kaapana 0.6.0
#      data-processing/base-images/base-python-cpu/files/requirements.txt);
#   3. replay the Dockerfile's COPY/WORKDIR/RUN lines (docker/tools/dockerfile_replay.py) from its own folder;
#      any failing pip/python step fails this script;
#   4. `pip check`, the image's ENTRYPOINT (no task, no Kaapana env → must refuse with a clear error, exit 1);
#   5. radiomics parity: the features of the shipped lung1 crop from the image's pyradiomics build must equal
#      the dev venv's pyradiomics 3.0.1 to 1e-6 (skipped with a note when the dev venv has no pyradiomics).
# Usage: bash .ci/check-processing-image.sh      (PYTHON312=... to use another 3.12 interpreter)
# Cache: pip's wheel cache (~/.cache/pip, incl. the built pyradiomics-bhklab wheel; the replay drops the
# Dockerfile's --no-cache-dir for that); the venv itself is recreated every run.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
PY312="${PYTHON312:-$HOME/.pyenv/versions/3.12.1/bin/python}"
WORK="${KAAPANA_FHIR_CACHE:-$HOME/.cache/kaapana-fhir}/processing-image-check"
EXT=docker/kaapana-fhir
DOCKERFILE=$EXT/processing-containers/kaapana-fhir/Dockerfile
[ -x "$PY312" ] || { echo "Python 3.12 not found at $PY312 (pyenv install 3.12.1 or set PYTHON312)" >&2; exit 1; }
"$PY312" -c 'import sys; assert sys.version_info[:2] == (3, 12), sys.version' \
  || { echo "$PY312 is not Python 3.12" >&2; exit 1; }

python3 docker/tools/build_layout.py >/dev/null
rm -rf "$WORK"; mkdir -p "$WORK"
"$PY312" -m venv "$WORK/venv"
V="$WORK/venv/bin"
"$V/python" -m pip install -q --upgrade "pip>=24"
echo "== base layer (Kaapana 0.6.0 base-python-cpu pins)"
"$V/python" -m pip install -q "pydicom==3.0.1" "minio==7.2.10" "pandas==2.2.3" "requests==2.32.3" \
  "jsonschema==4.23.0" "SimpleITK==2.4.0" "plotly==5.24.1" "wheel==0.45.0"
echo "== replay $DOCKERFILE ($("$V/python" -V))"
entry=$("$V/python" docker/tools/dockerfile_replay.py "$DOCKERFILE" --root "$WORK/root" --venv "$WORK/venv" --pip-cache | tail -n 1)
"$V/python" -m pip check
echo "== image command: $entry"
mapfile -t cmd < <("$V/python" -c 'import json,sys; print("\n".join(json.loads(sys.argv[1])))' "$entry")
set +e
out=$(env -i PATH="$V:/usr/bin:/bin" HOME="$WORK" "${cmd[@]}" 2>&1); rc=$?
set -e
if [ "$rc" -ne 1 ] || ! grep -q "WORKFLOW_DIR is not set" <<<"$out"; then
  echo "image command without Kaapana env: expected exit 1 with 'WORKFLOW_DIR is not set', got $rc:" >&2
  echo "$out" >&2; exit 1
fi
mkdir -p "$WORK/run"
set +e
out=$(env -i PATH="$V:/usr/bin:/bin" HOME="$WORK" WORKFLOW_DIR="$WORK/run" TASK_ID=other DAG_ID=other "${cmd[@]}" 2>&1); rc=$?
set -e
if [ "$rc" -ne 1 ] || ! grep -q "cannot tell which flow to run" <<<"$out"; then
  echo "image command without a task: expected exit 1 with 'cannot tell which flow to run', got $rc:" >&2
  echo "$out" >&2; exit 1
fi
echo "== radiomics parity (lung1 crop, shipped default settings)"
S=operators/kaapana_fhir/data/radiomics/default_settings.yaml
I=operators/kaapana_fhir/dev/data/demo/lung1_crop_image.nrrd
L=operators/kaapana_fhir/dev/data/demo/lung1_crop_label.nrrd
"$V/python" docker/tools/radiomics_features.py "$S" "$I" "$L" "$WORK/features-312.json"
if [ -x .venv/bin/python ] && .venv/bin/python -c "import radiomics" 2>/dev/null; then
  .venv/bin/python docker/tools/radiomics_features.py "$S" "$I" "$L" "$WORK/features-dev.json"
  python3 - "$WORK/features-312.json" "$WORK/features-dev.json" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
if set(a) != set(b):
    sys.exit(f"feature names differ: {sorted(set(a) ^ set(b))[:10]}")
bad = [(k, a[k], b[k]) for k in a if abs(a[k] - b[k]) > 1e-6 * max(1.0, abs(b[k]))]
if bad:
    sys.exit(f"{len(bad)} of {len(a)} features differ beyond 1e-6, e.g. {bad[:3]}")
sys.stdout.write(f"== {len(a)} features equal to the dev venv's pyradiomics to 1e-6\n")
PY
else
  echo "== (dev venv without pyradiomics: parity not checked)"
fi
echo "== processing image check passed in $(( $(date +%s) - t0 ))s"
