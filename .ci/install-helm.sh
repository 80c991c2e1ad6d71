#!/usr/bin/env bash
# helm for the packaging tests, built from the Go module proxy (about 2.5-3 min on 2 cores with an empty Go cache).
# Cached in $GOBIN by .ci/go-install.sh.
set -euo pipefail
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
bash "$(dirname "$0")/go-install.sh" helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION"
"${GOBIN:-${HOME:-/root}/go/bin}/helm" version --short
