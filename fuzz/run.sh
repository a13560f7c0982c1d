#!/bin/sh
# `make fuzz`: runs every fuzz target for FUZZ_SECS seconds (default 60) with cargo-fuzz on a
# stable toolchain (RUSTC_BOOTSTRAP=1 unlocks the -Z flags it passes), installing cargo-fuzz
# first when it is missing. FUZZ_TARGETS="kick tzif" picks targets. The committed seeds in
# corpus/<target>/ are read, never written: new inputs go to target/work-corpus/<target>/,
# crashes to artifacts/<target>/. Exits non-zero when any target found a crash or timeout.
set -eu
cd "$(dirname "$0")"
FUZZ_SECS=${FUZZ_SECS:-60}
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz from crates.io" >&2
    cargo install cargo-fuzz --locked
fi
targets=${FUZZ_TARGETS:-$(cargo fuzz list)}
cargo fuzz build
failed=""
for t in $targets; do
    work="target/work-corpus/$t"
    mkdir -p "$work" "artifacts/$t"
    echo "fuzz: $t for ${FUZZ_SECS}s" >&2
    # -timeout: one input taking over 10 s is a finding (every parse and search must end).
    if ! cargo fuzz run "$t" "$work" "corpus/$t" -- \
        -max_total_time="$FUZZ_SECS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1; then
        failed="$failed $t"
    fi
done
if [ -n "$failed" ]; then
    echo "fuzz: findings in:$failed (see fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz: no findings" >&2
