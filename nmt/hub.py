"""Translation from Python in three lines:

    import nmt
    model = nmt.load("exp/multi30k_de_en/final.pt")
    model.translate(["Ein Mann fährt Fahrrad."])
"""

from __future__ import annotations

import dataclasses
import os

import torch

from nmt.checkpoint import Translator
from nmt.config import DecodeConfig
from nmt.precision import resolve_device, resolve_dtype
from nmt.translate import Translation, load_ensemble, translate_sentences


class TranslationModel:
    """A checkpoint (or an ensemble of checkpoints) loaded on a device, ready to translate lists of strings."""

    def __init__(self, translators: list[Translator], device: torch.device, dtype: torch.dtype):
        self.translators = translators
        self.device = device
        self.dtype = dtype
        self.decode: DecodeConfig = translators[0].config.decode

    def translate_nbest(self, sentences: list[str], beam: int | None = None, nbest: int = 1,
                        **decode_overrides: object) -> list[list[Translation]]:
        """`nbest` translations per sentence with their scores (and ids); `decode_overrides` are DecodeConfig
        fields such as alpha or max_len_b."""
        decode = dataclasses.replace(self.decode, beam=beam or max(self.decode.beam, nbest), nbest=nbest,
                                     **decode_overrides)
        first = self.translators[0]
        return translate_sentences([t.model for t in self.translators], first.src_model, first.tgt_model,
                                   list(sentences), decode, self.device, self.dtype, decode.batch_tokens)

    def translate(self, sentences: list[str], beam: int | None = None) -> list[str]:
        """The best translation of each sentence, detokenised, in input order (beam None: the checkpoint's)."""
        if isinstance(sentences, str):
            raise TypeError("translate() takes a list of sentences; wrap a single one in a list")
        return [hyps[0].text for hyps in self.translate_nbest(sentences, beam=beam)]


def load(path: str | os.PathLike | list[str | os.PathLike], device: str = "auto",
         dtype: str = "auto") -> TranslationModel:
    """Load a checkpoint (or a list of them, decoded as an ensemble) for translation."""
    paths = [str(p) for p in path] if isinstance(path, (list, tuple)) else [str(path)]
    torch_device = resolve_device(device)
    return TranslationModel(load_ensemble(paths, torch_device), torch_device, resolve_dtype(dtype, torch_device))
