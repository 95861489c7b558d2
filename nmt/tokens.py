"""The special token ids and the length rules every part of nmt shares; no dependencies, so that the model,
the data pipeline and the search can all import it.

The ids are the same in every SentencePiece model nmt trains (see `nmt.data.subword`), so no code ever asks a
vocabulary which id padding has.
"""

from __future__ import annotations

from typing import TypeVar

PAD, UNK, BOS, EOS = 0, 1, 2, 3

# The longest line, in subwords (EOS not counted), that is translated or validated whole. Search time grows
# with the product of source and output lengths, so a runaway line (a document without line breaks) would
# stall a whole run: a longer source line is cut to this length when translating, and refused in a dev set.
MAX_LINE_SUBWORDS = 1024

Lengths = TypeVar("Lengths")


def with_eos(lengths: Lengths) -> Lengths:
    """Sequence lengths as the model sees them: the source gets an EOS, the target a BOS (input) or an EOS
    (output). Works on ints and numpy arrays alike."""
    return lengths + 1  # type: ignore[operator]
