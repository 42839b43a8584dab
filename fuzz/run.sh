#!/usr/bin/env bash
# Builds the fuzz targets with clang (libFuzzer + ASan + UBSan), generates the seed corpora and
# runs each target for a fixed number of executions; fails on any finding.
#   bash fuzz/run.sh            # the test-suite run: 100000 executions per parser target
#   RUNS=5000000 SEED=0 bash fuzz/run.sh   # a longer run, random seed (0 = libFuzzer picks one)
# The test-suite run uses a fixed seed so that CI is reproducible: a finding there is the same
# finding on every machine. New inputs are found by the long runs with random seeds.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-100000}
SEED=${SEED:-1}
# FUZZ_BUILD: an existing tree configured with clang and -DTQKV_FUZZ=ON (scripts/test.sh passes
# its sanitizer tree); by default build-fuzz, configured here.
build=${FUZZ_BUILD:-build-fuzz}
if [ -z "${FUZZ_BUILD:-}" ]; then
  CC=clang CXX=clang++ cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTQKV_FUZZ=ON \
    -DTQKV_BUILD_TESTS=OFF -DTQKV_BUILD_BENCH=OFF -DTQKV_BUILD_TOOLS=OFF >/dev/null
fi
grep -q "^TQKV_FUZZ:BOOL=ON" "$build/CMakeCache.txt" || { echo "fuzz/run.sh: $build is not configured with -DTQKV_FUZZ=ON" >&2; exit 1; }
cmake --build "$build" -j"$(nproc)"
seeds=$build/seeds
rm -rf "$seeds" "$build/corpus" && "./$build/fuzz/tqkv-make-seeds" "$seeds"
for t in cache_load:cache npy:npy kernels:kernels model:model spec:spec tokenizer:tokenizer calibration:calibration \
         runner_load:runner; do
  name=${t%%:*}; dir=${t##*:}
  runs=$RUNS
  [ "$name" = cache_load ] && runs=$((RUNS / 4))  # each input that loads attends over every kernel (~27 s in CI)
  [ "$name" = kernels ] && runs=$((RUNS / 80))   # each input builds codecs and fast tables for every kernel (~35 s in CI)
  [ "$name" = model ] && runs=$((RUNS / 2))      # each input that loads runs the model
  [ "$name" = spec ] && runs=$((RUNS / 5))       # each input that parses builds and runs a cache
  [ "$name" = tokenizer ] && runs=$((RUNS / 10)) # each input parses a vocabulary of hundreds of tokens (~20 s)
  [ "$name" = calibration ] && runs=$((RUNS / 5))  # each input that loads builds and runs a cache
  [ "$name" = runner_load ] && runs=$((RUNS / 10)) # each input that loads decodes a token (CI is at its limit)
  mkdir -p "$build/corpus/$name"
  echo "== fuzz_$name: $runs executions"
  log=$build/fuzz_$name.log
  if ! "./$build/fuzz/fuzz_$name" -runs="$runs" -seed="$SEED" -max_len=8192 -rss_limit_mb=2048 -print_final_stats=1 \
       "$build/corpus/$name" "$seeds/$dir" >"$log" 2>&1; then
    tail -40 "$log"
    echo "== fuzz_$name: FINDING (crash input saved by libFuzzer in the current directory)"
    exit 1
  fi
  grep -E "^(stat::number_of_executed_units|stat::new_units_added)" "$log"
done
echo "== fuzz: no findings"
