#!/bin/sh
# Builds nqueens.wasm (wasm32-wasi) with zig cc from the `ziglang` PyPI package,
# pinned so that the bytes are the same on every machine. Installs it into a venv
# under ${PEERGRID_TOOLS:-$HOME/.cache/peergrid-tools} when missing.
set -eu
cd "$(dirname "$0")"
ZIG_VERSION=0.17.1
tools=${PEERGRID_TOOLS:-$HOME/.cache/peergrid-tools}
py=$tools/venv/bin/python
if ! "$py" -c "import ziglang" 2>/dev/null || \
   [ "$("$py" -c 'import importlib.metadata as m; print(m.version("ziglang"))')" != "$ZIG_VERSION" ]; then
  python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install --quiet "ziglang==$ZIG_VERSION"
fi
"$py" -m ziglang cc -target wasm32-wasi -O2 -s -I ../include nqueens.c -o nqueens.wasm
echo "built $(pwd)/nqueens.wasm"
