#!/usr/bin/env bash
# Translate a file (or stdin) with a recipe's trained model and, given a reference, score the translation:
# a thin wrapper over `nmt translate` and `nmt score`. Each recipe's decode.sh calls this with its config.
#
# Usage: decode.sh [--config FILE] [--checkpoint CKPT] [--input FILE] [--output FILE] [--ref FILE]
#                  [--beam N] [--device DEV] [section.key=value ...]
#   --config      the recipe config that trained the model (its exp_dir holds the checkpoint)
#   --checkpoint  default: EXP/averaged.pt when run.sh stage 3 made it, else EXP/final.pt
#   --input       sentences, one per line, raw text (default: stdin)
#   --output      translations, line N translating input line N (default: stdout)
#   --ref         reference translations: BLEU, chrF and TER (with sacrebleu signatures) go to stderr
#   --beam        beam size, 1 for greedy (default: the checkpoint's decode.beam)
#   --device      auto, cpu or cuda[:N] (default: auto)
#
# Example: echo "Ein Mann fährt Fahrrad." | recipes/multi30k/decode.sh
#          recipes/multi30k/decode.sh --input test.de --ref test.en --output test.hyp
set -euo pipefail

config=
checkpoint=
input=
output=
ref=
beam=
device=auto
options="config checkpoint input output ref beam device"
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
parse_options "$@"
[ -n "$config" ] || [ -n "$checkpoint" ] || die "give --config (the recipe's) or --checkpoint"

[ -z "$config" ] || config="$(from_caller "$config")"
if [ -n "$checkpoint" ]; then
  checkpoint="$(caller_path "$checkpoint")"
else
  checkpoint="$(decode_checkpoint "$(cfg exp_dir)")"
fi
[ -f "$checkpoint" ] || die "$checkpoint not found: train the model first (run.sh --stop-stage 3)"

args=(translate -c "$checkpoint" --device "$device")
[ -z "$input" ] || args+=(-i "$(caller_path "$input")")
[ -z "$beam" ] || args+=(--beam "$beam")
log "translating ${input:-stdin} with $checkpoint"

if [ -z "$ref" ]; then
  nmt "${args[@]}" ${output:+-o "$(caller_path "$output")"}
  exit 0
fi
if [ -n "$output" ]; then
  hyp="$(caller_path "$output")"
else
  hyp="$(mktemp)"
  trap 'rm -f "$hyp"' EXIT
fi
nmt "${args[@]}" -o "$hyp"
[ -n "$output" ] || cat "$hyp"
nmt score -r "$(caller_path "$ref")" -i "$hyp" >&2
