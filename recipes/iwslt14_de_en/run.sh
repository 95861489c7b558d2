#!/usr/bin/env bash
# IWSLT German-English (TED talks, the Hub's IWSLT/iwslt2017 de-en): download, SentencePiece, DDP training,
# averaging, test, summary. See README.md for how this data relates to the IWSLT14 benchmark.
#
# Usage: recipes/iwslt14_de_en/run.sh [--stage N] [--stop-stage M] [--config FILE] [--ngpu N] [--avg N]
#                                     [section.key=value ...]
#   --config  conf/de_en.yaml (default); relative paths are from the repository root
#   --ngpu    GPUs to train on; more than 1 trains with DDP through torchrun (default: $NGPU, else 1)
#   --avg     checkpoints stage 3 averages into EXP/averaged.pt (default: the config's train.average_best)
#   overrides go to every nmt command, e.g. data.train.hf=json data.train.hf_files=[my/train.jsonl]
#
# Stages (each logs what it does and skips work already done, so a rerun continues where it stopped):
#   0  download the parquet export of IWSLT/iwslt2017 (config iwslt2017-de-en) into exp/iwslt14_de_en/data,
#      unless the config's files are there already; then read every split once (aligned, decodable)
#   1  nmt prepare: joint SentencePiece model and encoded cache in EXP
#   2  nmt train --no-test, on --ngpu GPUs (torchrun, DDP) when more than one; --resume when EXP holds a
#      checkpoint
#   3  average the best checkpoints by dev BLEU into EXP/averaged.pt
#   4  nmt test: translate the test split into EXP/test/test.hyp, scores into EXP/results.json
#   5  print the results table (EXP/results.md) for README.md
set -euo pipefail

stage=0
stop_stage=5
config=recipes/iwslt14_de_en/conf/de_en.yaml
ngpu="${NGPU:-1}"
avg=
options="stage stop_stage config ngpu avg"
. "$(dirname "${BASH_SOURCE[0]}")/../common/lib.sh"
parse_options "$@"
config="$(from_caller "$config")"
log "config $config${overrides[*]+ with ${overrides[*]}}; stages $stage..$stop_stage"

hub_repo=IWSLT/iwslt2017
hub_config=iwslt2017-de-en
data_dir=exp/iwslt14_de_en/data

if stage_on 0; then
  log "stage 0: data"
  if missing="$(recipe_py files-present "$config" ${overrides[@]+"${overrides[@]}"})"; then
    log "the config's data files are present"
  else
    log "missing: ${missing//$'\n'/ }"
    log "downloading the parquet export of $hub_repo ($hub_config) into $data_dir"
    recipe_py fetch-parquet "$hub_repo" "$hub_config" "$data_dir" --splits train validation test
  fi
  step_check_data
fi

if stage_on 1; then
  log "stage 1: SentencePiece model and encoded cache"
  step_prepare
fi

if stage_on 2; then
  log "stage 2: training on $ngpu GPU(s)"
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
