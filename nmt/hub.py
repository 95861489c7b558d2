"""Translation from Python in three lines, as fairseq's hub interface allows:

    import nmt
    translator = nmt.load("exp/multi30k_de_en/final.pt")
    translator.translate("Ein Mann fährt Fahrrad.")  # a string for a string, a list for a list
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from nmt.translator import Translator


def load(path: str | os.PathLike | Sequence[str | os.PathLike], device: str = "auto", dtype: str = "auto",
         **options: Any) -> Translator:
    """Load a checkpoint (or a list of them, decoded as an ensemble) for translation. `options` change the
    checkpoint's decoding options (beam=1, alpha=0.6, ...); `translate` takes them per call too."""
    return Translator.load(path, device, dtype, **options)
