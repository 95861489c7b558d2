#!/usr/bin/env bash
# Translate a file (or stdin) with this recipe's model and, given --ref, score it. Options: see
# recipes/common/decode.sh.
exec "$(dirname "${BASH_SOURCE[0]}")/../common/decode.sh" --config recipes/wmt14_en_de/conf/en_de.yaml "$@"
