#!/usr/bin/env bash
# Says whether the tests (`cargo test --all-features`: the dev-dependencies
# and every feature, `bench` included) and the program (`cargo build` or
# `cargo run`: default features) compile the dependencies they share with
# the same features. If they do not, a `cargo run --release` after
# `cargo test --release --all-features` compiles those crates (and all that
# depend on them) again. Prints the crates that differ and
# exits 1; the fix is to name them in Cargo.toml's [dependencies] with the
# features the test build gives them.
set -euo pipefail
cd "$(dirname "$0")/.."
# Every crate but dfs-p2p itself, whose features differ by design (its
# rebuild is expected).
features() {
    cargo tree --locked "$@" -f '{p} {f}' --prefix none | sed 's/ (\*)//' | grep -v '^dfs-p2p ' | sort -u
}
program=$(features -e normal,build)
tests=$(features -e normal,build,dev --all-features)
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
