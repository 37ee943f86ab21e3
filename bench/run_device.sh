#!/usr/bin/env bash
# Benchmarks on the lent GPU machine (H100 + its 16-core host), one device call per group of steps:
#
#   bash bench/run_device.sh build cbench cpu      # <= 9 min: library, C bench (all cores), cpu suite
#   bash bench/run_device.sh build fwd             # the machine may be fresh: build is quick
#   bash bench/run_device.sh build bwd decode
#
# The machine's copy of the tree may have no .git: prefix the command with
# FA_GIT_COMMIT=$(git rev-parse HEAD) (expanded here, before the call) so the JSON names the commit.
#
# BENCH_ARGS adds options to every suite, e.g. BENCH_ARGS=--sequential for the 16-core cpu suite
# (torch's OpenMP threads spin after each call and slow whichever provider runs next in turns).
#
# No step names = every step (may not fit one 10-minute call). Each step has its own time limit
# (STEP_TIMEOUT_<step>, seconds) so one slow step cannot take the others down; results written
# so far are kept (the Python tool rewrites its JSON after each case). Everything lands in $OUT:
#   $OUT/bench-<steps>.tar.gz   logs, tables, JSON and PNGs
#   $OUT/summary-<steps>.txt    the tables, for reading without unpacking
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/bench-out-device}
STEPS=("$@")
[ ${#STEPS[@]} -eq 0 ] && STEPS=(build cbench cpu fwd bwd decode)
TAG=$(IFS=-; echo "${STEPS[*]}")
WORK=$(mktemp -d)/bench-$TAG
BUILD=build-device
PY=${PYTHON:-python3}
mkdir -p "$WORK" "$OUT"
export FLASHATTN_LIBRARY=$PWD/$BUILD/libflashattn.so PYTHONPATH=$PWD/python${PYTHONPATH:+:$PYTHONPATH}

step_build() {
    { nvidia-smi; $PY -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))'; \
      lscpu | head -20; echo "commit: ${FA_GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null)}"; } \
      > "$WORK/machine.txt" 2>&1
    if ! { cmake -S . -B $BUILD -DCMAKE_BUILD_TYPE=Release -DFA_BUILD_TESTS=OFF &&
           cmake --build $BUILD -j"$(nproc)"; }; then
        echo "cuda build failed; building the cpu backend only" >&2
        cmake -S . -B $BUILD -DCMAKE_BUILD_TYPE=Release -DFA_BUILD_TESTS=OFF -DFA_WITH_CUDA=OFF &&
            cmake --build $BUILD -j"$(nproc)"
    fi
    $PY -m flash_attn >> "$WORK/machine.txt" 2>&1
}
step_cbench() { "$BUILD/bench/fa_bench" --threads all | tee "$WORK/fa_bench.txt"; }
step_suite() { $PY -m flash_attn bench --suite "$1" --device "$2" --out "$WORK/$1" ${BENCH_ARGS:-} | tee "$WORK/$1.txt"; }
step_cpu() { step_suite cpu cpu; }
step_fwd() { step_suite fwd cuda; }
step_bwd() { step_suite bwd cuda; }
step_decode() { step_suite decode cuda; }

# Per-step limits keep each suggested group of steps under one 10-minute device call.
declare -A LIMIT=([build]=100 [cbench]=140 [cpu]=280 [fwd]=450 [bwd]=300 [decode]=150)
finish() {
    for j in "$WORK"/*/*.json; do  # a suite cut off by its time limit: table and plot of what it measured
        [ -f "$j" ] && [ ! -f "${j%.json}.png" ] && $PY -m flash_attn bench --replot "$j" > "${j%.json}.replot.txt" 2>&1
    done
    for f in "$WORK"/machine.txt "$WORK"/fa_bench.txt "$WORK"/{cpu,fwd,bwd,decode}.txt \
             "$WORK"/*/*.replot.txt; do
        [ -f "$f" ] && { echo "=== $(basename "$f")"; cat "$f"; }
    done > "$OUT/summary-$TAG.txt"
    for s in "${STEPS[@]}"; do
        echo "=== step $s, last lines"; tail -c 2000 "$WORK/step-$s.log" 2>/dev/null | tr '\r' '\n' | tail -n 3
    done >> "$OUT/summary-$TAG.txt"
    tar -czf "$OUT/bench-$TAG.tar.gz" -C "$(dirname "$WORK")" "$(basename "$WORK")"
}
trap finish EXIT
for s in "${STEPS[@]}"; do
    limit=${LIMIT[$s]:-300}
    var="STEP_TIMEOUT_$s"
    limit=${!var:-$limit}
    echo "=== step $s (limit ${limit}s) $(date -u +%H:%M:%S)"
    export -f "step_$s" step_suite 2>/dev/null
    export BUILD PY WORK BENCH_ARGS
    timeout "$limit" bash -c "step_$s" > >(tee "$WORK/step-$s.log") 2>&1 ||
        echo "step $s: exit $? (124 = time limit)" | tee -a "$WORK/step-$s.log"
done
