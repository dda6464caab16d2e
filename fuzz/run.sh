#!/usr/bin/env bash
# Builds and runs the fuzz targets (docs/fuzzing.md).
#
#   fuzz/run.sh build            build every target (libFuzzer, stable Rust)
#   fuzz/run.sh smoke [SECONDS]  each target for SECONDS (default
#                                $FUZZ_SMOKE_SECONDS or 20) from the seed corpus;
#                                fails on the first crash, panic, leak or hang
#   fuzz/run.sh long SECONDS [TARGET...]
#                                each target in turn for SECONDS, at nice 19,
#                                one process at a time, keeping its corpus in
#                                fuzz/work/corpus/TARGET and its log in
#                                fuzz/work/logs/TARGET.log
#   fuzz/run.sh merge [TARGET...]  minimize fuzz/corpus/TARGET plus
#                                fuzz/work/corpus/TARGET into fuzz/corpus/TARGET
#   fuzz/run.sh gen              rewrite the seed corpora (gen-corpus)
#   fuzz/run.sh run TARGET ARGS  the target binary with libFuzzer ARGS
#                                (e.g. a crash file to reproduce it)
#
# No cargo-fuzz: the targets are plain binaries of this crate, built with
# the sanitizer-coverage flags cargo-fuzz passes, which stable rustc
# accepts; libfuzzer-sys compiles libFuzzer itself (needs a C++ compiler).
set -euo pipefail
cd "$(dirname "$0")"
FUZZ_DIR=$(pwd)

TARGETS=(ike_wire endpoint_responder endpoint_initiator config control pcap tcp_segment)
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
BIN_DIR="$FUZZ_DIR/target/$TRIPLE/release"
WORK="$FUZZ_DIR/work"

# What `cargo fuzz build --sanitizer none` passes: 8-bit counters, PC table
# and comparison tracing for libFuzzer; debug assertions and overflow
# checks stay on (see also [profile.release] in Cargo.toml).
export RUSTFLAGS="-Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares \
--cfg fuzzing -Cdebug-assertions -Coverflow-checks"

build() {
    local args=()
    for t in "${TARGETS[@]}"; do args+=(--bin "$t"); done
    # --target keeps RUSTFLAGS off build scripts and proc macros.
    cargo build --locked --release --target "$TRIPLE" "${args[@]}"
}

# Common libFuzzer options: a hang is an input that takes over 10 s.
OPTS=(-timeout=10 -rss_limit_mb=2048 -print_final_stats=1)

# Prints "target executions seconds cov ft corpus" from a libFuzzer log.
summarize() {
    local t=$1 log=$2
    local execs secs last cov ft corp
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
    last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9a-zA-Z]*\).*/\1/p' <<<"$last")
    printf '%-20s execs=%-12s secs=%-6s cov=%-6s ft=%-6s corpus=%s\n' \
        "$t" "${execs:-?}" "${secs:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}"
}

run_one() {
    # run_one TARGET SECONDS CORPUS_DIR LOG
    local t=$1 secs=$2 dir=$3 log=$4
    mkdir -p "$dir" "$WORK/artifacts"
    local status=0
    ${NICE:-} "$BIN_DIR/$t" "${OPTS[@]}" -max_total_time="$secs" \
        -artifact_prefix="$WORK/artifacts/$t-" "$dir" "$FUZZ_DIR/corpus/$t" \
        >"$log" 2>&1 || status=$?
    summarize "$t" "$log"
    if [ "$status" -ne 0 ]; then
        echo "fuzz target $t failed (exit $status); last lines of $log:" >&2
        tail -40 "$log" >&2
        return "$status"
    fi
}

cmd=${1:-smoke}
shift || true
case "$cmd" in
build)
    build
    ;;
smoke)
    secs=${1:-${FUZZ_SMOKE_SECONDS:-20}}
    build
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    for t in "${TARGETS[@]}"; do
        run_one "$t" "$secs" "$tmp/$t" "$tmp/$t.log"
    done
    echo "fuzz smoke: ${#TARGETS[@]} targets, ${secs}s each"
    echo "fuzz: ${#TARGETS[@]} passed, 0 failed"
    ;;
long)
    secs=${1:?usage: run.sh long SECONDS [TARGET...]}
    shift
    [ "$#" -gt 0 ] && TARGETS=("$@")
    build
    mkdir -p "$WORK/logs"
    for t in "${TARGETS[@]}"; do
        NICE="nice -n 19" run_one "$t" "$secs" "$WORK/corpus/$t" "$WORK/logs/$t.log" | tee -a "$WORK/summary.txt" ||
            echo "$t: crashed, see $WORK/logs/$t.log and $WORK/artifacts/" | tee -a "$WORK/summary.txt"
    done
    ;;
merge)
    [ "$#" -gt 0 ] && TARGETS=("$@")
    build
    for t in "${TARGETS[@]}"; do
        new=$(mktemp -d)
        "$BIN_DIR/$t" -merge=1 -timeout=10 "$new" "$FUZZ_DIR/corpus/$t" "$WORK/corpus/$t" \
            >"$WORK/merge-$t.log" 2>&1 || { tail "$WORK/merge-$t.log"; exit 1; }
        rm -rf "$FUZZ_DIR/corpus/$t"
        mv "$new" "$FUZZ_DIR/corpus/$t"
        echo "$t: $(ls "$FUZZ_DIR/corpus/$t" | wc -l) files, $(du -sh "$FUZZ_DIR/corpus/$t" | cut -f1)"
    done
    ;;
gen)
    # Uninstrumented build, in its own target directory.
    env -u RUSTFLAGS cargo run --locked --release --bin gen-corpus -- "$FUZZ_DIR/corpus"
    ;;
run)
    t=${1:?usage: run.sh run TARGET [ARGS...]}
    shift
    build >&2
    exec "$BIN_DIR/$t" "$@"
    ;;
*)
    sed -n '2,20p' "$0" >&2
    exit 2
    ;;
esac
