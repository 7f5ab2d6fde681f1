#!/bin/sh
# Builds collatz.wasm (wasm32-wasip1) reproducibly: the same bytes on every machine
# with the toolchain pinned in the workspace's rust-toolchain.toml.
# Needs: rustup target add wasm32-wasip1
set -eu
cd "$(dirname "$0")"
here=$(pwd)
RUSTFLAGS="--remap-path-prefix=$here=/job --remap-path-prefix=${CARGO_HOME:-$HOME/.cargo}=/cargo" \
  cargo build --quiet --release --target wasm32-wasip1 --target-dir "${JOB_TARGET_DIR:-$here/target}"
cp "${JOB_TARGET_DIR:-$here/target}/wasm32-wasip1/release/job-collatz-wasi.wasm" collatz.wasm
echo "built $(pwd)/collatz.wasm"
