#!/usr/bin/env bash
# Tatoeba Spanish-English (both directions): seeded split, SentencePiece, training, averaging, test, summary.
#
# Usage: recipes/tatoeba_es_en/run.sh [--stage N] [--stop-stage M] [--config FILE] [--ngpu N] [--avg N]
#                                     [section.key=value ...]
#   --config  conf/es_en.yaml (default) or conf/en_es.yaml; relative paths are from the repository root
#   --ngpu    GPUs to train on; more than 1 trains with DDP through torchrun (default: $NGPU, else 1)
#   --avg     checkpoints stage 3 averages into EXP/averaged.pt (default: the config's train.average_best)
#   overrides go to every nmt command, e.g. train.max_epochs=5 exp_dir=exp/tatoeba_try
#
# Stages (each logs what it does and skips work already done, so a rerun continues where it stopped):
#   0  split $NMT_DATA_DIR/tatoeba-spa-eng/all.{es,en}.gz by English sentence (seed 1; valid 2000 and test
#      5000 pairs) into exp/tatoeba_es_en/data, shared by both directions: no English sentence of valid or
#      test occurs in train
#   1  nmt prepare: joint SentencePiece model and encoded cache in EXP
#   2  nmt train --no-test (with --resume when EXP holds a checkpoint)
#   3  average the best checkpoints by dev BLEU into EXP/averaged.pt
#   4  nmt test: translate the test split into EXP/test/test.hyp, scores into EXP/results.json
#   5  print the results table (EXP/results.md) for README.md
set -euo pipefail

stage=0
stop_stage=5
config=recipes/tatoeba_es_en/conf/es_en.yaml
ngpu="${NGPU:-1}"
avg=
options="stage stop_stage config ngpu avg"
. "$(dirname "${BASH_SOURCE[0]}")/../common/lib.sh"
parse_options "$@"
config="$(from_caller "$config")"
log "config $config${overrides[*]+ with ${overrides[*]}}; stages $stage..$stop_stage"

# The split the README reports. Changing any of these changes the test set: retrain both directions.
split_seed=1
valid_pairs=2000
test_pairs=5000
data_dir=exp/tatoeba_es_en/data

if stage_on 0; then
  log "stage 0: split by English sentence (seed $split_seed, valid $valid_pairs, test $test_pairs) into $data_dir"
  [ -n "${NMT_DATA_DIR:-}" ] || die "NMT_DATA_DIR is not set: export it as the folder that holds tatoeba-spa-eng/"
  corpus="$NMT_DATA_DIR/tatoeba-spa-eng"
  for lang in es en; do
    [ -f "$corpus/all.$lang.gz" ] || die "$corpus/all.$lang.gz not found: is NMT_DATA_DIR right?"
  done
  nmt split "$corpus/all.es.gz" "$corpus/all.en.gz" --langs es en --key en \
    --valid "$valid_pairs" --test "$test_pairs" --seed "$split_seed" -o "$data_dir"
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
  log "stage 4: translating and scoring the test split"
  step_test
fi

if stage_on 5; then
  log "stage 5: results"
  step_summary
fi
