#!/usr/bin/env bash
# Multi30k (task 1) German-English: data check, SentencePiece, training, checkpoint averaging, test, summary.
#
# Usage: recipes/multi30k/run.sh [--stage N] [--stop-stage M] [--config FILE] [--ngpu N] [--avg N]
#                                [section.key=value ...]
#   --config  conf/de_en.yaml (default) or conf/en_de.yaml; relative paths are from the repository root
#   --ngpu    GPUs to train on; more than 1 trains with DDP through torchrun (default: $NGPU, else 1)
#   --avg     checkpoints stage 3 averages into EXP/averaged.pt (default: the config's train.average_best)
#   overrides go to every nmt command, e.g. train.max_epochs=5 exp_dir=exp/m30k_try
#
# Stages (each logs what it does and skips work already done, so a rerun continues where it stopped):
#   0  check $NMT_DATA_DIR/multi30k: files present, sides aligned, text decodable
#   1  nmt prepare: joint SentencePiece model and encoded cache in EXP
#   2  nmt train --no-test (with --resume when EXP holds a checkpoint)
#   3  average the best checkpoints by dev BLEU into EXP/averaged.pt
#   4  nmt test: translate every test set into EXP/test/NAME.hyp, scores into EXP/results.json
#   5  print the results table (EXP/results.md) for README.md
set -euo pipefail

stage=0
stop_stage=5
config=recipes/multi30k/conf/de_en.yaml
ngpu="${NGPU:-1}"
avg=
options="stage stop_stage config ngpu avg"
. "$(dirname "${BASH_SOURCE[0]}")/../common/lib.sh"
parse_options "$@"
config="$(from_caller "$config")"
log "config $config${overrides[*]+ with ${overrides[*]}}; stages $stage..$stop_stage"

if stage_on 0; then
  log "stage 0: checking the corpus"
  [ -n "${NMT_DATA_DIR:-}" ] || die "NMT_DATA_DIR is not set: export it as the folder that holds multi30k/"
  [ -d "$NMT_DATA_DIR/multi30k" ] || die "$NMT_DATA_DIR/multi30k not found: is NMT_DATA_DIR right?"
  step_check_data
fi

if stage_on 1; then
  log "stage 1: SentencePiece model and encoded cache"
  step_prepare
fi

if stage_on 2; then
  log "stage 2: training"
  step_train
fi

if stage_on 3; then
  log "stage 3: checkpoint averaging"
  step_average
fi

if stage_on 4; then
  log "stage 4: translating and scoring the test sets"
  step_test
fi

if stage_on 5; then
  log "stage 5: results"
  step_summary
fi
