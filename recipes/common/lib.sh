# shellcheck shell=bash
# shellcheck disable=SC2154  # stage, stop_stage, config and options are set by the script that sources this
# Helpers for recipes/*/run.sh and decode.sh, sourced (not run) after the script has set its option defaults:
# option parsing, logging, stage selection, config queries, and the steps that every recipe runs the same
# way (prepare, train, average, test, summary). Each step logs what it does and skips work already done.
#
# A script lists its options in `options` ("stage stop_stage config ..."), gives each a default, then calls
# `parse_options "$@"`. `--name value` and `--name=value` set the variable (dashes become underscores); every
# `section.key=value` argument is a config override, collected in the array `overrides` and passed to each
# nmt command.

# Run from the repository root, where the configs' relative paths (exp/...) point; `from_caller` resolves a
# path the user typed relative to the folder the script was started from.
CALLER_DIR="$PWD"
NMT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$NMT_ROOT" || exit 1
RUN_COMMAND="${0#"$NMT_ROOT"/} $*"

caller_path() { case "$1" in /*|-|"") echo "$1" ;; *) echo "$CALLER_DIR/$1" ;; esac; }
from_caller() {  # an existing file given relative to where the user stood, else the path as it is (root-relative)
  if [ -e "$(caller_path "$1")" ]; then caller_path "$1"; else echo "$1"; fi
}

log() { printf '%s %s: %s\n' "$(date +%H:%M:%S)" "${0##*/}" "$*" >&2; }
die() { log "error: $*"; exit 1; }

if ! command -v nmt >/dev/null 2>&1; then
  [ -x "$NMT_ROOT/.venv/bin/nmt" ] || die "nmt is not installed: run 'make install' or activate its virtualenv"
  PATH="$NMT_ROOT/.venv/bin:$PATH"
fi
PYTHON="${PYTHON:-$(dirname "$(command -v nmt)")/python}"
[ -x "$PYTHON" ] || PYTHON=python3

usage() {  # the script's header comment, without the shebang and the leading '# '
  sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"
}

overrides=()
parse_options() {
  local name value known="none"
  [ -z "$options" ] || known="--${options// / --}"
  known="${known//_/-}"
  while [ $# -gt 0 ]; do
    case "$1" in
      -h|--help) usage; exit 0 ;;
      --*=*) name="${1%%=*}"; value="${1#*=}"; shift ;;
      --*) [ $# -ge 2 ] || die "option $1 needs a value"; name="$1"; value="$2"; shift 2 ;;
      *=*) overrides+=("$1"); shift; continue ;;
      *) die "unexpected argument '$1': options are --name value, config overrides section.key=value" ;;
    esac
    name="${name#--}"
    name="${name//-/_}"
    case " $options " in
      *" $name "*) printf -v "$name" '%s' "$value" ;;
      *) die "unknown option --${name//_/-} (options: $known)" ;;
    esac
  done
}

# stage_on N: whether stage N lies within --stage .. --stop-stage.
stage_on() { [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ]; }

recipe_py() { "$PYTHON" "$NMT_ROOT/recipes/common/recipe.py" "$@"; }

# cfg KEY: the value of a key of the config, overrides applied (e.g. `cfg exp_dir`, `cfg train.average_best`).
cfg() { recipe_py get "$config" "$1" ${overrides[@]+"${overrides[@]}"}; }

# The checkpoint that stage 4 decodes and decode.sh uses: EXP/averaged.pt when stage 3 made it from the
# current training run, else EXP/final.pt (which `nmt train` already makes the average of the best
# train.average_best checkpoints).
decode_checkpoint() {
  local exp="$1"
  if [ -f "$exp/averaged.pt" ] && [ -f "$exp/averaged.sources" ] && [ "$exp/averaged.pt" -nt "$exp/final.pt" ]
  then
    echo "$exp/averaged.pt"
  else
    echo "$exp/final.pt"
  fi
}

step_check_data() {  # every split read once: present, aligned, decodable (a hub dataset lands in its cache)
  recipe_py check-data "$config" ${overrides[@]+"${overrides[@]}"} --marker "$(cfg exp_dir)/data_checked.txt"
}

step_prepare() {  # SentencePiece model(s) and the encoded cache; nmt prepare reuses both when nothing changed
  nmt prepare "$config" ${overrides[@]+"${overrides[@]}"}
}

step_train() {  # nmt train --no-test, resuming where a checkpoint exists; torchrun when ngpu > 1
  local exp args differ
  exp="$(cfg exp_dir)"
  if [ -f "$exp/final.pt" ]; then
    log "$exp/final.pt exists: training is done (to train further: delete it, raise train.max_epochs, rerun)"
    if ! differ="$(recipe_py config-matches "$config" "$exp/final.pt" ${overrides[@]+"${overrides[@]}"})"; then
      log "warning: $exp/final.pt was trained with other values of: $differ"
    fi
    return 0
  fi
  args=(train "$config" ${overrides[@]+"${overrides[@]}"} --no-test)
  if [ -f "$exp/checkpoints/last.pt" ]; then
    log "resuming from $exp/checkpoints/last.pt"
    args+=(--resume)
  fi
  if [ "${ngpu:-1}" -gt 1 ]; then
    log "training on $ngpu GPUs (DDP): torchrun --standalone --nproc_per_node=$ngpu -m nmt ${args[*]}"
    torchrun --standalone --nproc_per_node="$ngpu" -m nmt "${args[@]}"
  else
    nmt "${args[@]}"
  fi
}

step_average() {  # EXP/averaged.pt: the N best checkpoints by dev score averaged (N: $avg or train.average_best)
  local exp n sources checkpoints
  exp="$(cfg exp_dir)"
  n="${avg:-}"
  [ -n "$n" ] || n="$(cfg train.average_best)"
  [ -f "$exp/final.pt" ] || die "$exp/final.pt not found: run stage 2 first"
  if [ "$n" -le 1 ]; then
    log "averaging not configured (train.average_best=$n): stage 4 decodes $exp/final.pt"
    rm -f "$exp/averaged.sources"
    return 0
  fi
  sources="$(recipe_py best-checkpoints "$exp" "$n")"
  if [ "$(printf '%s\n' "$sources" | grep -c .)" -lt 2 ]; then
    log "fewer than 2 best checkpoints kept in $exp/checkpoints: stage 4 decodes $exp/final.pt"
    rm -f "$exp/averaged.sources"
    return 0
  fi
  if [ "$(decode_checkpoint "$exp")" = "$exp/averaged.pt" ] && [ "$(cat "$exp/averaged.sources")" = "$sources" ]
  then
    log "$exp/averaged.pt already averages: ${sources//$'\n'/ }"
    return 0
  fi
  mapfile -t checkpoints <<< "$sources"
  nmt average "${checkpoints[@]}" -o "$exp/averaged.pt"
  printf '%s\n' "$sources" > "$exp/averaged.sources"
}

step_test() {  # nmt test: EXP/test/NAME.hyp for every test set, scores in EXP/results.json
  local exp ckpt
  exp="$(cfg exp_dir)"
  ckpt="$(decode_checkpoint "$exp")"
  [ -f "$ckpt" ] || die "$ckpt not found: run stage 2 first"
  if recipe_py results-current "$config" "$ckpt" ${overrides[@]+"${overrides[@]}"}; then
    log "$exp/results.json already scores $ckpt on every test set"
    return 0
  fi
  log "translating and scoring the test sets with $ckpt"
  nmt test "$config" ${overrides[@]+"${overrides[@]}"} -c "$ckpt" >&2  # its JSON to the log; stage 5 prints the table
}

step_summary() {  # the results table (from EXP/results.json) to stdout and EXP/results.md
  recipe_py summary "$config" ${overrides[@]+"${overrides[@]}"} --command "$RUN_COMMAND"
}
