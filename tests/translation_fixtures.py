"""Tiny random models, SentencePiece models and checkpoints for the search and translation tests.

Everything is small enough to build in well under a second; SentencePiece models are cached per process.
"""

from __future__ import annotations

import functools
import random
from pathlib import Path

import torch

from nmt import CHECKPOINT_FORMAT
from nmt.checkpoint import save_atomic
from nmt.config import Config, DecodeConfig, ModelConfig, SubwordConfig, to_dict
from nmt.data.subword import Subword, train_subword
from nmt.model.seq2seq import Seq2Seq, build_model

SYLLABLES = ["ka", "lo", "mi", "nu", "pe", "ri", "so", "ta", "ve", "zu", "ä", "ö"]


def tiny_model_config(**overrides: object) -> ModelConfig:
    base = dict(emb_dim=16, enc_hidden=16, dec_hidden=32, attention_dim=16, dropout=0.0, emb_dropout=0.0)
    base.update(overrides)
    return ModelConfig(**base)  # type: ignore[arg-type]


def tiny_model(vocab: int, seed: int, **overrides: object) -> Seq2Seq:
    """A random model in eval mode; the seed fixes its weights."""
    torch.manual_seed(seed)
    return build_model(tiny_model_config(**overrides), vocab, vocab, True).eval()


def synthetic_sentences(n: int, seed: int = 0, max_words: int = 8) -> list[str]:
    rng = random.Random(seed)
    words = ["".join(rng.choices(SYLLABLES, k=rng.randint(1, 3))) for _ in range(40)]
    return [" ".join(rng.choices(words, k=rng.randint(1, max_words))) for _ in range(n)]


@functools.lru_cache(maxsize=4)
def tiny_spm(vocab_size: int = 48, seed: int = 0) -> bytes:
    return train_subword(synthetic_sentences(400, seed), SubwordConfig(vocab_size=vocab_size))


def make_checkpoint(path: Path, seed: int = 0, spm: bytes | None = None, decode: DecodeConfig | None = None,
                    **model_overrides: object) -> Path:
    """Write a self-contained checkpoint of a random model with a joint SentencePiece model."""
    spm = spm if spm is not None else tiny_spm()
    vocab = len(Subword(spm))
    model_cfg = tiny_model_config(**model_overrides)
    torch.manual_seed(seed)
    model = build_model(model_cfg, vocab, vocab, True)
    config = Config(exp_dir=str(path.parent), model=model_cfg,
                    decode=decode or DecodeConfig(beam=3, max_len_a=1.0, max_len_b=4, batch_tokens=64))
    payload = {"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "config": to_dict(config),
               "spm": {"src": spm, "tgt": spm}}
    save_atomic(payload, path)
    return path
