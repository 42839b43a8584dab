#!/usr/bin/env bash
# README command 1: set up, build, and run the main job — codec fidelity and speed on built-in data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
./build/bench/tqkv-bench quality --dim 128 --bits 1,2,3,4 --method mse,prod,qjl --vectors 100000
echo
./build/bench/tqkv-bench encode --dim 128 --bits 4
