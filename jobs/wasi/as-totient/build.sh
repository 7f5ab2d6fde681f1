#!/bin/sh
# Builds totient.wasm with AssemblyScript from npm (the version pinned in
# package.json; `npm ci` needs package-lock.json, committed beside it).
set -eu
cd "$(dirname "$0")"
[ -x node_modules/.bin/asc ] || npm ci --no-audit --no-fund --silent
npx --no-install asc assembly/index.ts --target release
echo "built $(pwd)/totient.wasm"
