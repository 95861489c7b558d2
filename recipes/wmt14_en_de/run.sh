#!/usr/bin/env bash
# WMT14 English-German (the Hub's wmt/wmt14 de-en): download, SentencePiece, DDP training, averaging,
# newstest2014, summary. Meant for GPUs: about 4.5M training pairs.
#
# Usage: recipes/wmt14_en_de/run.sh [--stage N] [--stop-stage M] [--config FILE] [--ngpu N] [--avg N]
#                                   [section.key=value ...]
#   --config  conf/en_de.yaml (default); relative paths are from the repository root
#   --ngpu    GPUs to train on; more than 1 trains with DDP through torchrun (default: $NGPU, else 1)
#   --avg     checkpoints stage 3 averages into EXP/averaged.pt (default: the config's train.average_best)
#   overrides go to every nmt command, e.g. data.train.hf=parquet data.train.hf_files=[/data/wmt14/train.parquet]
#
# Stages (each logs what it does and skips work already done, so a rerun continues where it stopped):
#   0  read every split once through `datasets` (downloading wmt/wmt14 into its cache on the first run;
#      set HF_HOME to choose where) and check it: present, aligned, decodable
#   1  nmt prepare: joint SentencePiece model and encoded cache in EXP
#   2  nmt train --no-test, on --ngpu GPUs (torchrun, DDP) when more than one; --resume when EXP holds a
#      checkpoint
#   3  average the best checkpoints by dev BLEU into EXP/averaged.pt
#   4  nmt test: translate newstest2014 into EXP/test/newstest2014.hyp, scores into EXP/results.json
#   5  print the results table (EXP/results.md) for README.md
set -euo pipefail

stage=0
stop_stage=5
config=recipes/wmt14_en_de/conf/en_de.yaml
ngpu="${NGPU:-1}"
avg=
options="stage stop_stage config ngpu avg"
. "$(dirname "${BASH_SOURCE[0]}")/../common/lib.sh"
parse_options "$@"
config="$(from_caller "$config")"
log "config $config${overrides[*]+ with ${overrides[*]}}; stages $stage..$stop_stage"

if stage_on 0; then
  log "stage 0: data (the first run downloads about 0.8 GB of parquet into the datasets cache)"
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
  log "stage 4: translating and scoring newstest2014"
  step_test
fi

if stage_on 5; then
  log "stage 5: results"
  step_summary
fi
