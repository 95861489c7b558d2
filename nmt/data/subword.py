"""SentencePiece models: training (joint or per language) and a small wrapper with fixed special ids.

Every model gets the special ids of `nmt.tokens` (pad 0, unk 1, bos 2, eos 3), so the model code never has to
ask which id padding has. The serialized model travels inside each checkpoint, so a checkpoint translates alone.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Iterator

import sentencepiece as spm

from nmt.config import SubwordConfig
from nmt.errors import NMTError
from nmt.tokens import BOS, EOS, PAD, UNK

log = logging.getLogger(__name__)


class Subword:
    """A SentencePiece model held in memory (from its serialized bytes)."""

    def __init__(self, model_bytes: bytes):
        self.model_bytes = bytes(model_bytes)
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(self.model_bytes)
        except (RuntimeError, OSError) as err:
            raise NMTError(f"not a valid SentencePiece model ({err})") from None
        if (self.sp.pad_id(), self.sp.unk_id(), self.sp.bos_id(), self.sp.eos_id()) != (PAD, UNK, BOS, EOS):
            raise NMTError("SentencePiece model has unexpected special ids; train it with `nmt prepare`")

    @classmethod
    def load(cls, path: str) -> "Subword":
        try:
            with open(path, "rb") as f:
                return cls(f.read())
        except FileNotFoundError:
            raise NMTError(f"file not found: {path}") from None

    def __len__(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, sentences: list[str]) -> list[list[int]]:
        return self.sp.encode(sentences, out_type=int)

    def encode_pieces(self, sentence: str) -> list[str]:
        return self.sp.encode(sentence, out_type=str)

    def decode(self, ids: list[list[int]]) -> list[str]:
        return self.sp.decode(ids)

    def id_to_piece(self, ids: list[int]) -> list[str]:
        return [self.sp.id_to_piece(i) for i in ids]


def train_subword(sentences: Iterable[str], cfg: SubwordConfig) -> bytes:
    """Train a SentencePiece model on `sentences`, returning its serialized bytes."""
    model = io.BytesIO()
    reader_error: list[BaseException] = []
    n_sentences = 0

    def nonempty() -> Iterator[str]:
        # SentencePiece turns an exception raised here into its own RuntimeError; keep the original instead.
        nonlocal n_sentences
        try:
            for s in sentences:
                if s.strip():
                    n_sentences += 1
                    yield s
        except Exception as err:
            reader_error.append(err)
            raise

    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=nonempty(),
            model_writer=model,
            vocab_size=cfg.vocab_size,
            model_type=cfg.model_type,
            character_coverage=cfg.character_coverage,
            input_sentence_size=cfg.max_sentences,
            shuffle_input_sentence=True,
            pad_id=PAD,
            unk_id=UNK,
            bos_id=BOS,
            eos_id=EOS,
            hard_vocab_limit=False,
            max_sentence_length=1 << 16,
            num_threads=2,
            minloglevel=2,
        )
    except RuntimeError as err:
        if reader_error:
            raise reader_error[0] from None
        if n_sentences == 0:
            raise NMTError("cannot train SentencePiece: the training data has no non-empty sentence") from None
        raise NMTError(f"SentencePiece training failed: {str(err).splitlines()[0]}") from None
    return model.getvalue()
