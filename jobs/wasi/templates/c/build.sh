#!/bin/sh
# Builds {{name}}.wasm with `zig cc` from the `ziglang` Python package, installed into
# a virtual environment under ${PEERGRID_TOOLS:-$HOME/.cache/peergrid-tools} the
# first time (needs python3 with venv; no other download).
set -eu
cd "$(dirname "$0")"
tools=${PEERGRID_TOOLS:-$HOME/.cache/peergrid-tools}
if ! "$tools/venv/bin/python" -c "import ziglang" 2>/dev/null; then
  python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install --quiet ziglang
fi
"$tools/venv/bin/python" -m ziglang cc -target wasm32-wasi -O2 -s main.c -o {{name}}.wasm
echo "built $(pwd)/{{name}}.wasm"
