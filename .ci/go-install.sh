#!/usr/bin/env bash
# One cached `go install` of a pinned tool from the Go module proxy (no binary downloads needed).
#   bash .ci/go-install.sh NAME MODULE/PATH/cmd VERSION
# Installs NAME into $GOBIN (default $HOME/go/bin) and is skipped when exactly that VERSION is already there:
# a marker file $GOBIN/.NAME-VERSION is written after a successful build (older markers are removed).
set -euo pipefail
name="$1"; module="$2"; version="$3"
GOBIN="${GOBIN:-${HOME:-/root}/go/bin}"
export GOBIN
if [ -x "$GOBIN/$name" ] && [ -f "$GOBIN/.$name-$version" ]; then
  echo "== $name $version already in $GOBIN"; exit 0
fi
command -v go >/dev/null || { echo "go is required to build $name (apt-get install golang or /usr/local/go)" >&2; exit 1; }
echo "== go install $module@$version -> $GOBIN"
mkdir -p "$GOBIN"
s=$(date +%s)
go install "$module@$version"
rm -f "$GOBIN/.$name-"*
touch "$GOBIN/.$name-$version"
echo "== $name built in $(( $(date +%s) - s ))s"
