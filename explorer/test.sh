#!/usr/bin/env bash
# Headless tests of tqkv-explorer: renders every panel under Xvfb (Mesa) and checks each PNG has
# the requested size and is not blank (luma variance, many distinct colours, no colour covering
# almost everything); a bad --data directory must still render (the error is shown in the UI)
# and a bad argument must exit with status 2.
#   usage: explorer/test.sh [BUILD_DIR]      (default: build-explorer, configured with
#                                             -DTQKV_BUILD_EXPLORER=ON)
# Needs: xvfb (xvfb-run), xauth, libgl1-mesa-dri.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-explorer}
exe=$build/explorer/tqkv-explorer
check=$build/explorer/tqkv-explorer-pngcheck
for f in "$exe" "$check"; do
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

# The real dump beside the project, when it is there.
real=../shared/data/tq-ref-128/kv
if [ -f "$real/keys.npy" ]; then
  shot --screenshot "$out/real-attention.png" --panel attention --size ${w}x${h} --data "$real" || fail=1
  "$check" "$out/real-attention.png" $w $h || fail=1
else
  echo "(real-dump screenshot skipped: no KV dump at $real)"
fi

# Bad arguments: usage and status 2 (checked before any display is opened).
for args in "--panel nope" "--size 10x10 --screenshot x.png" "--bogus"; do
  set +e
  # shellcheck disable=SC2086
  "$exe" $args >/dev/null 2>&1
  rc=$?
  set -e
  [ $rc -eq 2 ] || { echo "FAIL: tqkv-explorer $args exited $rc, expected 2" >&2; fail=1; }
done

if [ $fail -ne 0 ]; then echo "explorer tests FAILED" >&2; exit 1; fi
echo "explorer tests passed (5 panels + bad data + real dump + bad arguments)"
