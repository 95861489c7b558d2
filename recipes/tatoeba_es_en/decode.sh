#!/usr/bin/env bash
# Translate a file (or stdin) with the Tatoeba model and, given --ref, score it. Options: see
# recipes/common/decode.sh (--config recipes/tatoeba_es_en/conf/en_es.yaml for English-Spanish).
#
# Example: echo "¿Dónde está la estación?" | recipes/tatoeba_es_en/decode.sh
exec "$(dirname "${BASH_SOURCE[0]}")/../common/decode.sh" --config recipes/tatoeba_es_en/conf/es_en.yaml "$@"
