#!/bin/sh
# Rebuilds every committed wasi-v1 example module from its source with its pinned
# toolchain and fails if any byte differs from the committed file. Toolchains come
# from the registries (rustup, PyPI, npm) and are cached under
# ${PEERGRID_TOOLS:-$HOME/.cache/peergrid-tools}. Run from anywhere.
set -eu
cd "$(dirname "$0")"
status=0
for dir in rust-collatz c-nqueens go-amicable as-totient; do
  for wasm in "$dir"/*.wasm; do cp "$wasm" "$wasm.committed"; done
  "./$dir/build.sh"
  for committed in "$dir"/*.wasm.committed; do
    wasm=${committed%.committed}
    if cmp -s "$wasm" "$committed"; then
      echo "reproducible: $wasm"
    else
      echo "DIFFERS: $wasm rebuilt from source is not the committed module" >&2
      status=1
    fi
    mv "$committed" "$wasm"
  done
done
exit $status
