#!/bin/sh
# Builds {{name}}.wasm with AssemblyScript from npm (installed into node_modules the
# first time; needs Node.js and npm).
set -eu
cd "$(dirname "$0")"
[ -x node_modules/.bin/asc ] || npm install --no-audit --no-fund --silent
npx --no-install asc assembly/index.ts --target release
echo "built $(pwd)/{{name}}.wasm"
