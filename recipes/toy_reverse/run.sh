#!/usr/bin/env bash
# Toy task: learn to reverse random symbol sequences, a quick check that a cell and an attention type learn
# at all, and a way to compare them (conf/*.yaml differ only in cell, attention and exp_dir).
#
# Usage: recipes/toy_reverse/run.sh [--stage N] [--stop-stage M] [--config FILE] [section.key=value ...]
#   --config  conf/gru_bahdanau.yaml (default), conf/lstm_bahdanau.yaml, conf/gru_none.yaml,
#             conf/gru_dot.yaml or conf/gru_general.yaml; relative paths are from the repository root
#   overrides go to nmt train, e.g. train.max_epochs=2 exp_dir=exp/toy_reverse/try
#
# Stages (each logs what it does and skips work already done):
#   0  make_data.py: 20,000/500/1,000 train/valid/test sequences (seed 1), and 100,000 in train_large for
#      conf/gru_none.yaml (seed 2), into exp/toy_reverse/data
#   1  nmt train (which tests at the end: EXP/results.json); --resume when EXP holds a checkpoint; then print
#      the test set's exact match (the fraction of sequences reversed without a single error) and BLEU
set -euo pipefail

stage=0
stop_stage=1
config=recipes/toy_reverse/conf/gru_bahdanau.yaml
options="stage stop_stage config"
. "$(dirname "${BASH_SOURCE[0]}")/../common/lib.sh"
parse_options "$@"
config="$(from_caller "$config")"
log "config $config${overrides[*]+ with ${overrides[*]}}; stages $stage..$stop_stage"

data_dir=exp/toy_reverse/data

if stage_on 0; then
  log "stage 0: data into $data_dir"
  if [ -f "$data_dir/train.src" ] && [ -f "$data_dir/valid.src" ] && [ -f "$data_dir/test.tgt" ] \
     && [ -f "$data_dir/train_large.tgt" ]; then
    log "$data_dir already holds the data"
  else
    "$PYTHON" recipes/toy_reverse/make_data.py "$data_dir"
  fi
fi

if stage_on 1; then
  exp="$(cfg exp_dir)"
  log "stage 1: training and testing into $exp"
  if [ -f "$exp/final.pt" ] && [ -f "$exp/results.json" ] && [ "$exp/results.json" -nt "$exp/final.pt" ]; then
    log "$exp already holds a finished run (rm -rf $exp to train again)"
  else
    resume=()
    if [ -f "$exp/checkpoints/last.pt" ]; then
      log "resuming from $exp/checkpoints/last.pt"
      resume=(--resume)
    fi
    nmt train "$config" ${overrides[@]+"${overrides[@]}"} ${resume[@]+"${resume[@]}"} > /dev/null
  fi
  "$PYTHON" - "$exp/results.json" "$config" <<'PY'
import json, sys

r = json.load(open(sys.argv[1]))["test"]
print(f"{sys.argv[2]}: test exact_match {r['exact_match']:.4f}  BLEU {r['bleu']:.2f}  ({r['sentences']} sequences, "
      f"beam {r['beam']}, {r['dtype']} on {r['device']})")
PY
fi
