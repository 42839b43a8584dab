#!/usr/bin/env bash
# Regenerates the README's explorer screenshots, docs/explorer-*.png (1200x750), with the build
# in BUILD_DIR (default build-explorer). The data-dependent panels use the real dump in
# ../shared/data/tq-ref-128/kv when it is there (as in the README), the built-in synthetic data
# otherwise; the model panel uses the checkpoint ../shared/data/tq-ref-128 (skipped when absent).
# Needs xvfb-run.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-explorer}
exe=$build/explorer/tqkv-explorer
check=$build/explorer/tqkv-explorer-pngcheck
real=../shared/data/tq-ref-128/kv
data=()
if [ -f "$real/keys.npy" ]; then data=(--data "$real"); else echo "screenshots: no $real, using synthetic data" >&2; fi
mkdir -p docs
shot() { xvfb-run -a -s "-screen 0 1920x1200x24" "$exe" --size 1200x750 --font-size 14 "$@"; }
shot --screenshot docs/explorer-rotation.png --panel rotation
shot --screenshot docs/explorer-codebook.png --panel codebook
shot --screenshot docs/explorer-tokens.png --panel tokens "${data[@]}"
# The mouse over a token of the weights plot, to show a hover read-out.
shot --screenshot docs/explorer-attention.png --panel attention --hover 800,300 "${data[@]}"
# The memory panel holds the speed benchmark and the budget tiers: a larger window.
xvfb-run -a -s "-screen 0 1920x1200x24" "$exe" --size 1600x1000 --font-size 14 \
  --screenshot docs/explorer-memory.png --panel memory --bench-seconds 0.4 "${data[@]}"
# The model panel on tq-ref-128 (calibration and the auto preset's sensitivity probe take a minute
# or two on a shared VM), the mouse over a token of the coloured text for its read-out.
model=../shared/data/tq-ref-128
if [ -f "$model/config.json" ]; then
  shot --screenshot docs/explorer-model.png --panel model --model "$model" --caches fp32,auto-2.5 \
    --prompt "The Python interpreter " --hover 50,406
  "$check" docs/explorer-model.png 1200 750 4000
else
  echo "screenshots: no checkpoint at $model, docs/explorer-model.png not regenerated" >&2
fi
for p in rotation codebook tokens attention; do "$check" docs/explorer-$p.png 1200 750; done
"$check" docs/explorer-memory.png 1600 1000
ls -l docs/explorer-*.png
