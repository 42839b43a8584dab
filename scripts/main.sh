#!/usr/bin/env bash
# README command 1: set up, build, and run the main job — the fidelity + speed report of tqkv
# against the formats in use today, on the built-in synthetic data (and on the real KV dump of
# ../shared/data/tq-ref-128 when it is there).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
mkdir -p out
./build/bench/tqkv-bench report --json out/report.json --markdown out/report.md
echo
real=../shared/data/tq-ref-128/kv
if [ -f "$real/keys.npy" ]; then
  ./build/bench/tqkv-bench report --data "$real" --json out/report-tq-ref-128.json --markdown out/report-tq-ref-128.md
else
  echo "(real-data report skipped: no KV dump at $real; run: build/bench/tqkv-bench report --data DIR)"
fi
echo
model=../shared/data/tq-ref-128
if [ -f "$model/model.safetensors" ]; then
  # What decides: the model's own predictions over held-out text with each cache (ΔNLL).
  ./build/bench/tqkv-bench ppl --model "$model" --bytes 4096 \
    --config fp32,q8_0,q4_0,kivi2,K4V4-raw,K3V3-raw,K4V3-w16,K3.5V2.5-w16,K3V2-w16,K2.5V1.5-w16
else
  echo "(end-to-end ΔNLL skipped: no model at $model; run: build/bench/tqkv-bench ppl --model DIR)"
fi
echo
./build/bench/tqkv-bench attend --tokens 4096,16384 --seconds 0.3
echo
./build/bench/tqkv-bench encode --dim 128 --bits 4
echo
echo "reports written to out/ (report.md, report.json)"
