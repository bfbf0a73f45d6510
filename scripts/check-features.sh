#!/usr/bin/env bash
# Says whether `cargo test` and `cargo build` (or `cargo run`) compile the
# dependencies they share with the same features. If they do not, a
# `cargo run --release` after `cargo test --release` compiles those crates
# (and all that depend on them) again. Prints the crates that differ and
# exits 1; the fix is to name them in Cargo.toml's [dependencies] with the
# features the test build gives them.
set -euo pipefail
cd "$(dirname "$0")/.."
features() { cargo tree --locked -e "$1" -f '{p} {f}' --prefix none | sed 's/ (\*)//' | sort -u; }
program=$(features normal,build)
tests=$(features normal,build,dev)
# Every crate the program builds must be in the test build with the same
# features (the tests add crates of their own, which is fine).
differ=$(comm -23 <(echo "$program") <(echo "$tests"))
if [[ -n $differ ]]; then
    echo "check-features: the tests build these dependencies with other features than the program:"
    echo "$differ"
    echo "check-features: the tests have:"
    grep -F -f <(awk '{print $1" "$2" "}' <<<"$differ") <<<"$tests" || true
    exit 1
fi
echo "check-features: cargo test and cargo build share every dependency's build"
