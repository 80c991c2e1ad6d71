#!/usr/bin/env bash
# helm for the packaging tests, built from the Go module proxy (no binary downloads needed):
#   go install helm.sh/helm/v3/cmd/helm@v3.22.0   (about 2.5-3 min on 2 cores with an empty Go cache)
# Installs into $GOBIN (default /root/go/bin, or $HOME/go/bin) and is skipped when that helm already exists.
set -euo pipefail
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
GOBIN="${GOBIN:-${HOME:-/root}/go/bin}"
export GOBIN
if [ -x "$GOBIN/helm" ] && [ -f "$GOBIN/.helm-$HELM_VERSION" ]; then
  echo "== helm $HELM_VERSION already in $GOBIN"; exit 0
fi
command -v go >/dev/null || { echo "go is required to build helm (apt-get install golang or /usr/local/go)" >&2; exit 1; }
echo "== go install helm.sh/helm/v3/cmd/helm@$HELM_VERSION -> $GOBIN"
mkdir -p "$GOBIN"
go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
touch "$GOBIN/.helm-$HELM_VERSION"
"$GOBIN/helm" version --short
