#!/usr/bin/env bash
# MinIO server for the integration tests (the object store Kaapana runs), built from the Go module proxy:
#   go install github.com/minio/minio@<pinned pseudo-version>
# MinIO publishes no semver tags, so the pin is a pseudo-version (commit date + hash). Installs into $GOBIN
# (default $HOME/go/bin) and is skipped when that exact version is already there (marker file, like helm).
set -euo pipefail
MINIO_VERSION="${MINIO_VERSION:-v0.0.0-20260212201848-7aac2a2c5b7c}"
GOBIN="${GOBIN:-${HOME:-/root}/go/bin}"
export GOBIN
if [ -x "$GOBIN/minio" ] && [ -f "$GOBIN/.minio-$MINIO_VERSION" ]; then
  echo "== minio $MINIO_VERSION already in $GOBIN"; exit 0
fi
command -v go >/dev/null || { echo "go is required to build minio (apt-get install golang or /usr/local/go)" >&2; exit 1; }
echo "== go install github.com/minio/minio@$MINIO_VERSION -> $GOBIN"
mkdir -p "$GOBIN"
s=$(date +%s)
go install "github.com/minio/minio@$MINIO_VERSION"
rm -f "$GOBIN"/.minio-*
touch "$GOBIN/.minio-$MINIO_VERSION"
echo "== minio built in $(( $(date +%s) - s ))s"
"$GOBIN/minio" --version | head -1
