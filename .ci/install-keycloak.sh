#!/usr/bin/env bash
# Keycloak for the integration tests (Kaapana's OpenID provider): org.keycloak:keycloak-quarkus-dist from
# Maven Central (through mvn, so ~/.m2/settings.xml mirrors apply), unpacked into the cache
#   ${KAAPANA_FHIR_CACHE:-$HOME/.cache/kaapana-fhir}/keycloak-$KEYCLOAK_VERSION
# Skipped when that folder is complete. Keycloak 26.4 runs on Java 17 (Debian 12) or 21.
# Kaapana 0.6.0 runs 26.4.6; Maven Central's mirror here serves 26.4.5 and 26.4.7, not 26.4.6.
set -euo pipefail
KEYCLOAK_VERSION="${KEYCLOAK_VERSION:-26.4.7}"
CACHE="${KAAPANA_FHIR_CACHE:-${HOME:-/root}/.cache/kaapana-fhir}"
DEST="$CACHE/keycloak-$KEYCLOAK_VERSION"
if [ -x "$DEST/bin/kc.sh" ] && [ -f "$DEST/.complete" ]; then
  echo "== keycloak $KEYCLOAK_VERSION already in $DEST"; exit 0
fi
command -v mvn >/dev/null || { echo "mvn is required to fetch keycloak (apt-get install maven)" >&2; exit 1; }
command -v java >/dev/null || { echo "java is required to run keycloak (apt-get install openjdk-17-jre-headless)" >&2; exit 1; }
s=$(date +%s)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "== mvn dependency:copy org.keycloak:keycloak-quarkus-dist:$KEYCLOAK_VERSION:tar.gz"
mvn -B -q dependency:copy -Dartifact="org.keycloak:keycloak-quarkus-dist:$KEYCLOAK_VERSION:tar.gz" \
  -DoutputDirectory="$tmp" -Dmdep.overWriteReleases=true
mkdir -p "$CACHE"
rm -rf "$DEST" "$CACHE/keycloak-$KEYCLOAK_VERSION.partial"
mkdir -p "$CACHE/keycloak-$KEYCLOAK_VERSION.partial"
tar xzf "$tmp/keycloak-quarkus-dist-$KEYCLOAK_VERSION.tar.gz" -C "$CACHE/keycloak-$KEYCLOAK_VERSION.partial" --strip-components=1
mv "$CACHE/keycloak-$KEYCLOAK_VERSION.partial" "$DEST"
touch "$DEST/.complete"
echo "== keycloak $KEYCLOAK_VERSION unpacked into $DEST in $(( $(date +%s) - s ))s"
