#!/bin/bash
# run_device.sh [steps...] — builds libflashattn and runs the GPU checks on a machine with a
# GPU (the lent H100). Logs go to $OUT (default /tmp/fa-gpu-out). Steps (default: build test):
#   build      cmake build of the library and tests/gpu
#   test       the C grid on the cuda backend (gpu_test_fwd, and bwd/kvcache/dropout if built)
#   sanitize   compute-sanitizer memcheck + racecheck on the quick grid (FA_TEST_QUICK=1)
#   precompile precompile_check sm_80 sm_90a
#   bench      bench_cuda.py (needs torch): ours vs SDPA FLASH / CUDNN
#   tune       bench_cuda.py --only <shape> under each FLASHATTN_CUDA_TILES of $TUNE_TILES
set -o pipefail
OUT=${OUT:-/tmp/fa-gpu-out}
mkdir -p "$OUT"
B=build-gpu
export FLASHATTN_CACHE_DIR=${FLASHATTN_CACHE_DIR:-/tmp/fa-jit}
steps=${*:-build test}
rc=0
for step in $steps; do
  echo "=== $step $(date +%T)"
  case $step in
    build)
      nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv,noheader
      cmake -S . -B $B -DFA_BUILD_BENCH=OFF > "$OUT/build.log" 2>&1 &&
        cmake --build $B -j16 >> "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; } ;;
    test)
      for t in $B/tests/gpu/gpu_test_*; do
        "$t" 2>&1 | tee "$OUT/$(basename "$t").log" | grep -E "^(seed|cuda|FAIL|SKIP|ok|PASS)|passed|failed|error" | head -60
        r=${PIPESTATUS[0]}; echo "$(basename "$t") exit $r"; [ "$r" = 0 ] || rc=1
      done ;;
    sanitize)  # small shapes: a few subtests of each grid (SAN_CASES="test:filter ...")
      for tool in memcheck racecheck; do
        for tc in ${SAN_CASES:-fwd:gqa fwd:paged fwd:options bwd:gqa kvcache:paged kvcache:rotary}; do
          log=/tmp/fa-san-$tool-${tc%%:*}-${tc#*:}.log  # many: kept off $OUT (8 files at most)
          FA_TEST_QUICK=1 compute-sanitizer --tool $tool --error-exitcode 3 \
            $B/tests/gpu/gpu_test_${tc%%:*} ${tc#*:} > "$log" 2>&1
          r=$?; echo "compute-sanitizer $tool $tc exit $r: $(grep -h "SUMMARY" "$log" | tr -s " " | head -2 | tr "\n" " ")"
          [ "$r" = 0 ] || { rc=1; grep -v "^ok\|^  " "$log" | head -30; cat "$log" >> "$OUT/sanitize_failures.log"; }
        done
      done ;;
    precompile)
      FLASHATTN_CACHE_DIR=/tmp/fa-jit-pre $B/tests/gpu/precompile_check --require-nvrtc sm_80 sm_90a || rc=1 ;;
    tune)  # the forward at a few shapes under each FLASHATTN_CUDA_TILES in TUNE_TILES
      for tiles in ${TUNE_TILES:-table}; do
        for shape in ${TUNE_SHAPES:-bfloat16:128:0:4096 bfloat16:128:1:4096 bfloat16:64:0:4096}; do
          env $([ "$tiles" != table ] && echo FLASHATTN_CUDA_TILES=$tiles) FLASHATTN_LIBRARY=$B/libflashattn.so \
            python3 tests/gpu/bench_cuda.py --only $shape 2>&1 | grep -v "^device" | sed "s/^/[$tiles] /"
        done
      done ;;
    bench)
      FLASHATTN_CACHE_DIR=/tmp/fa-jit-bench-$$ FLASHATTN_LIBRARY=$B/libflashattn.so PYTHONUNBUFFERED=1 python3 tests/gpu/bench_cuda.py ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log" | tail -60 || rc=1 ;;
  esac
done
exit $rc
