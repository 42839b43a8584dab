#!/usr/bin/env bash
# Headless tests of tqkv-explorer: renders every panel under Xvfb (Mesa) and checks each PNG has
# the requested size and is not blank (luma variance, many distinct colours, no colour covering
# almost everything); a bad --data directory must still render (the error is shown in the UI)
# and a bad argument must exit with status 2. The model panel runs end to end on a small
# random-weight checkpoint written here (tqkv-explorer-testmodel: the tests' tiny Llama), and
# renders its "no model loaded" and bad-directory states.
#   usage: explorer/test.sh [BUILD_DIR]      (default: build-explorer, configured with
#                                             -DTQKV_BUILD_EXPLORER=ON)
# Needs: xvfb (xvfb-run), xauth, libgl1-mesa-dri.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-explorer}
exe=$build/explorer/tqkv-explorer
check=$build/explorer/tqkv-explorer-pngcheck
testmodel=$build/explorer/tqkv-explorer-testmodel
for f in "$exe" "$check" "$testmodel"; do
  [ -x "$f" ] || { echo "explorer/test.sh: $f not built (configure with -DTQKV_BUILD_EXPLORER=ON)" >&2; exit 1; }
done
command -v xvfb-run >/dev/null || { echo "explorer/test.sh: xvfb-run missing (apt-get install xvfb xauth)" >&2; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
shot() { xvfb-run -a -s "-screen 0 1920x1200x24" "$exe" "$@"; }

fail=0
w=1280 h=800
for panel in rotation codebook tokens attention memory; do
  shot --screenshot "$out/$panel.png" --panel "$panel" --size ${w}x${h} || { echo "FAIL: $panel did not render" >&2; fail=1; continue; }
  "$check" "$out/$panel.png" $w $h || fail=1
done

# Another size, and a directory that is not a dump: the panel renders, the error is on screen.
shot --screenshot "$out/bad-data.png" --panel tokens --size 1000x700 --data "$out/no-such-dump" 2>"$out/bad-data.err" \
  || { echo "FAIL: a bad --data directory must not stop the explorer" >&2; fail=1; }
"$check" "$out/bad-data.png" 1000 700 || fail=1
grep -q "no-such-dump" "$out/bad-data.err" || { echo "FAIL: no load error reported for a bad --data" >&2; fail=1; }

# The model panel on a small checkpoint (random weights, 2 layers, d 32): both caches score the
# text (B an auto preset, so the sensitivity probe and the rate plan run), continuations side by
# side. The lines it prints say what was computed (its context is 512: the 1024 bytes are scored
# in two segments, each one's first byte unscored); the coloured text makes thousands of colours.
"$testmodel" "$out/tiny" >/dev/null || { echo "FAIL: could not write the test checkpoint" >&2; fail=1; }
shot --screenshot "$out/model.png" --panel model --size ${w}x${h} --model "$out/tiny" --caches fp32,auto-3.5 \
  >"$out/model.log" 2>&1 || { echo "FAIL: model did not render" >&2; fail=1; }
"$check" "$out/model.png" $w $h 4000 || fail=1
grep -Eq 'model panel: 1023 tokens, 1022 scored, A fp32 [0-9.]+ nats/token, B auto-3.5 [0-9.]+ nats/token; plan auto-3.5 \{"budget":3.5,.*"layers":\[\{"k":[0-9.]+,"v":[0-9.]+\},\{.*continuations of 64 and 64 tokens' \
  "$out/model.log" || { echo "FAIL: the model panel did not compute its comparison:" >&2; cat "$out/model.log" >&2; fail=1; }
# No model, and a directory that is not a checkpoint: the panel says so.
shot --screenshot "$out/no-model.png" --panel model --size 1000x700 --model "" >"$out/no-model.log" 2>&1 \
  || { echo "FAIL: the model panel without a model did not render" >&2; fail=1; }
"$check" "$out/no-model.png" 1000 700 || fail=1
grep -q "model panel: no model loaded" "$out/no-model.log" || { echo "FAIL: no 'no model loaded' state" >&2; fail=1; }
shot --screenshot "$out/bad-model.png" --panel model --size 1000x700 --model "$out/no-such-model" >"$out/bad-model.log" 2>&1 \
  || { echo "FAIL: a bad --model directory must not stop the explorer" >&2; fail=1; }
grep -q "no-such-model: no config.json" "$out/bad-model.log" || { echo "FAIL: no error for a bad --model" >&2; fail=1; }

# The real dump beside the project, when it is there.
real=../shared/data/tq-ref-128/kv
if [ -f "$real/keys.npy" ]; then
  shot --screenshot "$out/real-attention.png" --panel attention --size ${w}x${h} --data "$real" || fail=1
  "$check" "$out/real-attention.png" $w $h || fail=1
else
  echo "(real-dump screenshot skipped: no KV dump at $real)"
fi

# Bad arguments: usage and status 2 (checked before any display is opened).
for args in "--panel nope" "--size 10x10 --screenshot x.png" "--bogus" "--caches fp32"; do
  set +e
  # shellcheck disable=SC2086
  "$exe" $args >/dev/null 2>&1
  rc=$?
  set -e
  [ $rc -eq 2 ] || { echo "FAIL: tqkv-explorer $args exited $rc, expected 2" >&2; fail=1; }
done

if [ $fail -ne 0 ]; then echo "explorer tests FAILED" >&2; exit 1; fi
echo "explorer tests passed (5 panels + model panel on a test checkpoint, no model, bad model + bad data + real dump + bad arguments)"
