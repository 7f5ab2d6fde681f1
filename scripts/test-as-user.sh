#!/usr/bin/env bash
# Runs `cargo test --workspace` as an unprivileged user: the suite must pass without
# root (issue 16); a test that needs root is #[ignore = "needs root: run .ci/run"],
# never silently passing. Run as root from the repository:
#
#     scripts/test-as-user.sh [USER] [-- more cargo test arguments]
#
# USER (default pgtest) is created if missing. It gets a copy of this tree (HEAD plus
# uncommitted changes to tracked files), the active toolchain (used in place when it
# can read it, else copied into its home), a copy of the crate registry (no
# downloads), and a target dir of its own. Prints the counts per test binary; removes
# what it copied and built afterwards (several GB) unless KEEP=1; the user stays
# (`userdel -r USER` removes it).
set -euo pipefail
cd "$(dirname "$0")/.."
user=${1:-pgtest}
shift || true
[ "${1:-}" = "--" ] && shift
[ "$(id -u)" = 0 ] || { echo "run as root (it creates and switches to $user)" >&2; exit 2; }

id -u "$user" >/dev/null 2>&1 || useradd -m -s /bin/bash "$user"
home=$(getent passwd "$user" | cut -d: -f6)
as_user() { runuser -u "$user" -- "$@"; }

# The toolchain rust-toolchain.toml names, as rustup resolved it for root.
sysroot=$(readlink -f "$(rustc --print sysroot)")
if as_user test -x "$sysroot/bin/cargo"; then
    toolchain=$sysroot
else
    toolchain=$home/toolchain
    if [ "$(cat "$toolchain/.source" 2>/dev/null)" != "$sysroot" ]; then
        echo "== copying the toolchain $sysroot (not readable by $user)"
        rm -rf "$toolchain"
        cp -a "$sysroot" "$toolchain"
        echo "$sysroot" > "$toolchain/.source"
        chown -R "$user": "$toolchain"
    fi
fi

# The registry root's cargo already filled (the user's cargo would download it again).
cargo_home=$home/.cargo
root_registry=${CARGO_HOME:-$HOME/.cargo}/registry
if [ -d "$root_registry" ]; then
    mkdir -p "$cargo_home"
    cp -a "$root_registry" "$cargo_home/"
    chown -R "$user": "$cargo_home"
fi

# The tree: HEAD plus uncommitted changes to tracked files (git stash create touches
# nothing; it prints nothing when the tree is clean).
tree=$home/peergrid
rm -rf "$tree"
mkdir -p "$tree"
ref=$(git stash create)
git archive "${ref:-HEAD}" | tar -x -C "$tree"
chown -R "$user": "$tree"

log=$home/test-as-user.log
echo "== cargo test --workspace as $user ($(as_user id)), toolchain $toolchain"
status=0
as_user env -i HOME="$home" USER="$user" PATH="$toolchain/bin:/usr/local/bin:/usr/bin:/bin" \
    CARGO_HOME="$cargo_home" CARGO_TARGET_DIR="$home/target" CARGO_INCREMENTAL=0 \
    bash -c 'cd "$1" && shift && cargo test --workspace "$@"' _ "$tree" "$@" \
    2>&1 | tee "$log" || status=$?

echo "== per test binary, as $user"
awk '/^ *Running /{bin=$NF; gsub(/[()]/, "", bin); sub(/.*\//, "", bin); sub(/-[0-9a-f]+$/, "", bin);
                   name=bin " (" ($2 == "unittests" ? $3 : $2) ")"}
     /^ *Doc-tests /{name="doc-tests " $2}
     /^test result:/{printf "%-70s %5d passed %3d failed %3d ignored\n", name, $4, $6, $8}' "$log"
awk '/^test result:/{p+=$4; f+=$6; i+=$8} END{printf "== in all: %d passed, %d failed, %d ignored\n", p, f, i}' "$log"

if [ "${KEEP:-0}" != 1 ]; then
    rm -rf "$home/target" "$tree" "$home/toolchain" "$cargo_home/registry"
fi
exit "$status"
