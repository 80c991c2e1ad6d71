#!/usr/bin/env bash
# MinIO server for the integration tests (the object store Kaapana runs), built from the Go module proxy.
# MinIO publishes no semver tags, so the pin is a pseudo-version (commit date + hash). Cached in $GOBIN by
# .ci/go-install.sh.
set -euo pipefail
MINIO_VERSION="${MINIO_VERSION:-v0.0.0-20260212201848-7aac2a2c5b7c}"
bash "$(dirname "$0")/go-install.sh" minio github.com/minio/minio "$MINIO_VERSION"
"${GOBIN:-${HOME:-/root}/go/bin}/minio" --version | head -1
