#!/bin/sh
# Builds {{name}}.wasm for wasm32-wasip1. Needs Rust (rustup); adds the target once.
set -eu
cd "$(dirname "$0")"
rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1
cargo build --quiet --release --target wasm32-wasip1
cp target/wasm32-wasip1/release/{{name}}.wasm {{name}}.wasm
echo "built $(pwd)/{{name}}.wasm"
