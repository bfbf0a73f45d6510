#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ (cargo-fuzz, libFuzzer) for SECONDS each,
# one after the other, and prints what each did. The working corpus of a
# target is fuzz/corpus/<target>/, seeded from the committed
# fuzz/seeds/<target>/; inputs that crash land in fuzz/artifacts/<target>/.
# A crash input worth keeping goes to fuzz/regressions/<target>/, where
# `cargo test --test fuzz_regressions` runs it on stable Rust.
#
# usage: scripts/fuzz.sh [SECONDS]     (default 60 per target)
# env:
#   FUZZ_TOOLCHAIN  the nightly toolchain cargo-fuzz builds with (default nightly)
#   FUZZ_TARGETS    the targets to run, space-separated (default: all)
#
# Exits non-zero if any target found a crash, a leak, a timeout or an
# out-of-memory input (or failed to run).
set -euo pipefail

cd "$(dirname "$0")/.."

seconds=${1:-60}
if ! [[ $seconds =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [SECONDS]" >&2
    exit 2
fi
toolchain=${FUZZ_TOOLCHAIN:-nightly}
read -r -a targets <<<"${FUZZ_TARGETS:-request_frame response_frame structure_node sealed_part ticket signed_record}"

# ---- tools ------------------------------------------------------------------
if ! cargo "+$toolchain" fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

# Release build with debug assertions and overflow checks, under
# AddressSanitizer (the default): built once here, reused by every run.
flags=(--debug-assertions)
echo "== building the fuzz targets"
cargo "+$toolchain" fuzz build "${flags[@]}"

# ---- runs -------------------------------------------------------------------
# A value of libFuzzer's final statistics (`stat::<name>: <value>`).
stat() { sed -n "s/^stat::$1: *//p" "$2" | tail -n 1; }
# The inputs libFuzzer saved as failures in a directory.
findings() { find "$1" -type f \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' \) | wc -l; }

declare -A summary
failed=()
for target in "${targets[@]}"; do
    corpus=fuzz/corpus/$target
    artifacts=fuzz/artifacts/$target
    log=$artifacts/last-run.log
    mkdir -p "$corpus" "$artifacts"
    # The seeds join the working corpus; what the fuzzer added stays.
    cp -p fuzz/seeds/"$target"/* "$corpus"/
    echo "== $target: ${seconds}s, corpus $(find "$corpus" -type f | wc -l) inputs"
    before=$(findings "$artifacts")
    status=0
    # -timeout: an input taking over 10 s is reported as a hang;
    # -malloc_limit_mb: so is one allocation over 64 MiB (no parser may
    # allocate more than a block, 2 MiB, on a length it was sent).
    cargo "+$toolchain" fuzz run "${flags[@]}" "$target" "$corpus" -- \
        -max_total_time="$seconds" -timeout=10 -malloc_limit_mb=64 -print_final_stats=1 \
        >"$log" 2>&1 || status=$?
    # The last status line: `#<runs> DONE cov: <n> ft: <n> corp: <n>/<size> …`.
    last=$(grep -E '^#[0-9]+[[:space:]]' "$log" | tail -n 1 || true)
    cov=$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$last")
    ft=$(sed -nE 's/.* ft: ([0-9]+).*/\1/p' <<<"$last")
    corp=$(sed -nE 's/.* corp: ([0-9]+\/[0-9]+[a-zA-Z]*).*/\1/p' <<<"$last")
    secs=$(sed -nE 's/^Done [0-9]+ runs in ([0-9]+) second.*/\1/p' "$log")
    crashes=$(($(findings "$artifacts") - before))
    [[ $status -eq 0 && $crashes -eq 0 ]] || failed+=("$target")
    summary[$target]=$(printf '%-15s %12s %6s %8s %6s %6s %12s %7s %s' "$target" \
        "$(stat number_of_executed_units "$log")" "${secs:-?}" "$(stat average_exec_per_sec "$log")" \
        "${cov:-?}" "${ft:-?}" "${corp:-?}" "$crashes" "$status")
    echo "${summary[$target]}"
done

# ---- summary ----------------------------------------------------------------
echo
echo "== ${seconds}s per target (logs: fuzz/artifacts/<target>/last-run.log)"
printf '%-15s %12s %6s %8s %6s %6s %12s %7s %s\n' target executions secs exec/s cov ft corpus crashes exit
for target in "${targets[@]}"; do
    echo "${summary[$target]}"
done
if ((${#failed[@]})); then
    echo "FAILED: ${failed[*]}; the inputs are in fuzz/artifacts/<target>/" >&2
    exit 1
fi
