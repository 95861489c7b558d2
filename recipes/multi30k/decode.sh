#!/usr/bin/env bash
# Translate a file (or stdin) with the Multi30k model and, given --ref, score it. Options: see
# recipes/common/decode.sh (--config recipes/multi30k/conf/en_de.yaml for English-German).
#
# Example: echo "Ein Mann fährt Fahrrad." | recipes/multi30k/decode.sh
#          recipes/multi30k/decode.sh --input test.de --ref test.en --output test.hyp
exec "$(dirname "${BASH_SOURCE[0]}")/../common/decode.sh" --config recipes/multi30k/conf/de_en.yaml "$@"
