#!/usr/bin/env bash
# Coverage-guided fuzzing of the mesh's parsers with AFL++ (cargo-afl): builds the targets of
# fuzz/ with AFL's instrumentation, then runs each for a while from the seed corpus in
# fuzz/corpus/<target>. Exits non-zero if any target found a crash or a hang; crashing inputs
# are in $FUZZ_OUT/<target>/default/crashes (replay one: `target < input`).
#
#   scripts/fuzz.sh                 # every target, 10 minutes each
#   scripts/fuzz.sh 30 detect       # one target, 30 seconds
#   FUZZ_DEBUG=1 scripts/fuzz.sh 20 # a smoke run on an unoptimised build (CI: half the build)
#
# cargo-afl works on the stable toolchain (it instruments with LLVM's sanitizer-coverage
# passes, which stable rustc exposes), where cargo-fuzz needs nightly for -Zsanitizer.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds=${1:-600}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(detect client_hello config file_discovery destination grpc_timeout route_match)
fi
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-../target/fuzz}}
out=${FUZZ_OUT:-${TMPDIR:-/tmp}/mesh-fuzz}

if ! command -v cargo-afl >/dev/null; then
    cargo install cargo-afl --version 0.18.2 --locked
fi
# The AFL++ runtime for this toolchain, built once.
cargo afl config --build >/dev/null 2>&1 || true
if [ "${FUZZ_DEBUG:-}" = 1 ]; then
    cargo afl build --locked
    bin="$CARGO_TARGET_DIR/debug"
else
    cargo afl build --release --locked
    bin="$CARGO_TARGET_DIR/release"
fi

# No UI; a machine whose core pattern pipes to a crash handler or whose CPU governor is not
# "performance" still fuzzes (these only cost some speed or a late crash report).
export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
export AFL_NO_AFFINITY=1 AFL_QUIET=1

failed=0
printf '%-15s %8s %10s %12s %9s %8s %6s\n' target seconds execs execs/s coverage crashes hangs
for target in "${targets[@]}"; do
    rm -rf "${out:?}/$target"
    mkdir -p "$out/$target"
    cargo afl fuzz -i "corpus/$target" -o "$out/$target" -V "$seconds" -t 2000 \
        "$bin/$target" >"$out/$target.log" 2>&1 || {
        echo "$target: afl-fuzz failed, see $out/$target.log" >&2
        tail -20 "$out/$target.log" >&2
        failed=1
        continue
    }
    stats="$out/$target/default/fuzzer_stats"
    get() { awk -v k="$1" '$1 == k { print $3 }' "$stats"; }
    crashes=$(get saved_crashes)
    hangs=$(get saved_hangs)
    printf '%-15s %8s %10s %12s %9s %8s %6s\n' "$target" "$(get run_time)" "$(get execs_done)" \
        "$(get execs_per_sec)" "$(get bitmap_cvg)" "$crashes" "$hangs"
    if [ "${crashes:-0}" != 0 ] || [ "${hangs:-0}" != 0 ]; then
        echo "$target: crashing or hanging inputs in $out/$target/default/" >&2
        failed=1
    fi
done
exit $failed
