#!/usr/bin/env bash
# `make demo`: a quick Multi30k de-en model end to end, within a wall-clock training budget, on any CPU.
#
# Usage: recipes/multi30k/demo.sh [section.key=value ...]   (NMT_DATA_DIR must point at the shared data)
#
# Trains recipes/multi30k/conf/demo.yaml into exp/demo (final.pt, results.json; training stops after the
# config's train.max_minutes), then prints the test2016 BLEU, the CPU kind and the total time. The issue's
# targets: >= 33 BLEU on an AVX512-BF16 CPU (bf16 chosen automatically), >= 28 on an AVX2-only one (fp32).
# A rerun resumes an interrupted run, and shows a finished one's results (rm -rf exp/demo to start afresh).
set -euo pipefail

options=""
. "$(dirname "${BASH_SOURCE[0]}")/../common/lib.sh"
parse_options "$@"
config=recipes/multi30k/conf/demo.yaml

if grep -q -m1 -w avx512_bf16 /proc/cpuinfo 2>/dev/null; then
  cpu_kind="AVX512-BF16"; target=33
elif grep -q -m1 -w avx2 /proc/cpuinfo 2>/dev/null; then
  cpu_kind="AVX2-only"; target=28
else
  cpu_kind="neither AVX512-BF16 nor AVX2"; target=
fi
cpu_name="$(sed -n 's/^model name[[:space:]]*: //p;T;q' /proc/cpuinfo 2>/dev/null || true)"
log "CPU kind: $cpu_kind (${cpu_name:-unknown model}), $(nproc) core(s)"

[ -n "${NMT_DATA_DIR:-}" ] || die "NMT_DATA_DIR is not set: export NMT_DATA_DIR=/path/to/data (the folder that \
holds multi30k/), or run 'make demo', which defaults it to ../shared/data"
for split in train valid test2016; do
  for lang in de en; do
    [ -f "$NMT_DATA_DIR/multi30k/$split.$lang.gz" ] || die "$NMT_DATA_DIR/multi30k/$split.$lang.gz not found: \
NMT_DATA_DIR must be the folder that holds multi30k/{train,valid,test2016}.{de,en}.gz"
  done
done

exp="$(cfg exp_dir)"
if [ -f "$exp/final.pt" ] && [ -f "$exp/results.json" ] && [ "$exp/results.json" -nt "$exp/final.pt" ]; then
  log "$exp already holds a finished demo run ($(date -r "$exp/results.json" '+%F %H:%M')): showing its" \
      "results; rm -rf $exp to run the demo again"
else
  resume=()
  if [ -f "$exp/checkpoints/last.pt" ]; then
    log "continuing the interrupted demo run in $exp (rm -rf $exp to start afresh)"
    resume=(--resume)
  fi
  log "training $config into $exp (budget: $(cfg train.max_minutes) minutes of training)"
  nmt train "$config" ${overrides[@]+"${overrides[@]}"} ${resume[@]+"${resume[@]}"}
fi

"$PYTHON" - "$exp" "$cpu_kind" "${target:-}" "$SECONDS" <<'PY'
import json, sys
from pathlib import Path

exp, kind, target, seconds = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
r = json.loads((exp / "results.json").read_text())["test2016"]
valid = [json.loads(line) for line in (exp / "metrics.jsonl").read_text().splitlines() if '"valid"' in line]
print(f"test2016 BLEU {r['bleu']:.2f}  chrF {r['chrf']:.2f}  (beam {r['beam']}, {r['dtype']} on {r['device']})")
print(f"  {r['signature']['bleu']}")
verdict = ""
if target:
    verdict = f"  target >= {target} on {kind}: " + ("met" if r["bleu"] >= float(target) else "NOT met")
print(f"CPU kind: {kind}{verdict}")
if valid:
    print(f"training: {valid[-1]['train_minutes']} min, {valid[-1]['update']} updates, epoch {valid[-1]['epoch']}")
print(f"total time of this demo.sh run: {seconds // 60} min {seconds % 60} s")
PY
