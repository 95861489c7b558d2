"""What `tools/bench.py` gives both systems: its settings, the one model both build, the data (plain text for
the peer, nmt's prepared SentencePiece model and arrays for us, the peer's vocabulary file derived from that
model), each system's config, the peer's batch size matched to ours, and the peer's venv. The driver's side
only: it imports nmt.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nmt.config import ModelConfig, config_from_dict

log = logging.getLogger("bench")

REPO = Path(__file__).resolve().parent.parent
SPLITS = ("train", "valid", "test2016")
SRC, TGT = "de", "en"
VOCAB = 8000  # joint unigram SentencePiece pieces

PEER = "Joey NMT 2.3.0"
# Installed in this order; torch first, so that joeynmt's `torch>=...` is met by the local 2.13.0 wheel.
PEER_PACKAGES = (("torch==2.13.0",), ("joeynmt==2.3.0", "sentencepiece<0.2", "importlib_metadata"))

# The benchmarked model, the same for both systems: a bidirectional LSTM encoder (256 per direction), a GRU
# decoder (512) with Bahdanau attention (512, Joey's fixed size: its decoder's) and input feeding, embeddings 256
# times sqrt(256) (Joey's `scale: True`), no tying. Our config's model section as it is written (and hashed
# into the cache keys of the trained models); `joey_config` and the FLOP count read it through `bench_model()`.
MODEL_SECTION = {"emb_dim": 256, "enc_hidden": 256, "dec_hidden": 512, "cell": "gru", "attention": "bahdanau",
                 "attention_dim": 512, "input_feeding": True, "bridge": "final", "dropout": 0.2, "emb_dropout": 0.2,
                 "tie_embeddings": "none", "scale_embeddings": True}


def bench_model() -> ModelConfig:
    return config_from_dict({"model": dict(MODEL_SECTION)}).model


@dataclass
class Settings:
    cache: Path
    data_dir: Path
    quick: bool
    device: str
    threads: int
    skip_peer: bool
    warmup_updates: int
    updates: int
    decode_sentences: int  # 0: all of test2016
    dev_sentences: int  # 0: all of valid
    decode_batch_tokens: int
    target_bleu: float
    max_model_updates: int
    model_updates: int  # > 0: train the decoding models for exactly this many updates, no BLEU target
    valid_every: int
    peak_seconds: float
    # Training recipe shared by both systems: a constant learning rate, no warm-up (Joey's `exponential` with a
    # factor of 1.0, ours `constant`). Joey's plateau scheduler fails on torch 2.13, and the inverse square root
    # decay learned too slowly for a benchmark's first run (our model: dev BLEU 1.7 after 300 updates).
    lr: float = 1e-3
    label_smoothing: float = 0.1
    clip_norm: float = 1.0
    max_tokens: int = 4096
    seed: int = 1
    beam: int = 5
    beam_alpha: float = 1.0  # GNMT length penalty ((5 + len) / 6) ** alpha, Joey's `beam_alpha`


@dataclass
class Data:
    """The bench's data, shared by both systems."""

    plain: Path  # plain-text files {split}.{lang} (Joey reads plain text)
    prep_exp: Path  # nmt's prepared experiment folder: spm/ and cache/
    spm_model: Path
    joey_vocab: Path
    valid_prefix: Path  # plain valid files (a subset with --dev-sentences)
    test_prefix: Path  # plain test files (a subset with --decode-sentences)
    vocab_size: int
    # Per training pair, lengths counting EOS: ours after nmt's cleaning, and Joey's (its max_length filter only).
    src_lengths: list[int]
    tgt_lengths: list[int]
    joey_src_lengths: list[int]
    joey_tgt_lengths: list[int]
    ours_batch_tokens: list[int]  # real target tokens of each batch of our epoch 0


def decompress(src: Path, dst: Path, max_lines: int = 0) -> None:
    if dst.exists():
        return
    tmp = dst.with_name(dst.name + ".tmp")
    with gzip.open(src, "rt", encoding="utf-8", newline="\n") as f, open(tmp, "w", encoding="utf-8",
                                                                         newline="\n") as out:
        for i, line in enumerate(f):
            if max_lines and i >= max_lines:
                break
            out.write(line)
    tmp.replace(dst)


def write_yaml(value: dict, path: Path) -> Path:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(value, sort_keys=False), encoding="utf-8")
    return path


def nmt_config(s: Settings, exp_dir: Path, data: Data | None, dtype: str, **train: Any) -> dict:
    """Our config for the bench model (the same model as `joey_config`)."""
    multi30k = s.data_dir / "multi30k"
    if data is not None:  # plain text, possibly the first --dev-sentences
        valid = {"src": f"{data.valid_prefix}.{SRC}", "tgt": f"{data.valid_prefix}.{TGT}"}
    else:
        valid = {"src": str(multi30k / f"valid.{SRC}.gz"), "tgt": str(multi30k / f"valid.{TGT}.gz")}
    return {
        "exp_dir": str(exp_dir),
        "data": {
            "src_lang": SRC, "tgt_lang": TGT,
            "train": {"src": str(multi30k / f"train.{SRC}.gz"), "tgt": str(multi30k / f"train.{TGT}.gz")},
            "valid": valid,
            "subword": {"joint": True, "model_type": "unigram", "vocab_size": VOCAB},
        },
        "model": dict(MODEL_SECTION),
        "train": {"seed": s.seed, "device": s.device, "dtype": dtype, "threads": s.threads,
                  "max_tokens": s.max_tokens, "optimizer": "adam", "lr": s.lr, "schedule": "constant",
                  "warmup_updates": 0, "clip_norm": s.clip_norm,
                  "label_smoothing": s.label_smoothing, "keep_best": 1, "keep_last": 1, "average_best": 0,
                  "tensorboard": False, "log_every": 50, **train},
        "decode": {"beam": s.beam, "alpha": s.beam_alpha, "length_penalty": "gnmt", "max_len_a": 1.5,
                   "max_len_b": 10, "batch_tokens": s.decode_batch_tokens},
    }


def _plain_copies(s: Settings, plain: Path) -> tuple[Path, Path]:
    """Decompressed Multi30k for Joey, and the valid and test prefixes (their first N lines where asked)."""
    plain.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        for lang in (SRC, TGT):
            decompress(s.data_dir / "multi30k" / f"{split}.{lang}.gz", plain / f"{split}.{lang}")
    valid_prefix = plain / (f"valid_first{s.dev_sentences}" if s.dev_sentences else "valid")
    test_prefix = plain / (f"test2016_first{s.decode_sentences}" if s.decode_sentences else "test2016")
    for prefix, split, n in ((valid_prefix, "valid", s.dev_sentences), (test_prefix, "test2016", s.decode_sentences)):
        for lang in (SRC, TGT):
            decompress(s.data_dir / "multi30k" / f"{split}.{lang}.gz", Path(f"{prefix}.{lang}"), n)
    return valid_prefix, test_prefix


def prepare_data(s: Settings) -> Data:
    """Plain-text copies for Joey, our SentencePiece model and encoded corpus (`nmt prepare`'s work), Joey's
    vocabulary file derived from that model, and the batch statistics both systems' batch sizes are matched on."""
    import numpy as np

    from nmt.data.batching import make_batches
    from nmt.data.prepare import prepare
    from nmt.tokens import with_eos

    root = s.cache / "data"
    valid_prefix, test_prefix = _plain_copies(s, root / "plain")
    prep_exp = root / "nmt"
    raw = nmt_config(s, prep_exp, None, "fp32")
    write_yaml(raw, prep_exp / "bench.yaml")
    log.info("preparing the data with nmt's prepare (SentencePiece %d, joint) in %s", VOCAB, prep_exp)
    prepared = prepare(config_from_dict(raw))  # what `nmt prepare` runs; a second run reuses the model and arrays

    # Joey's vocabulary file: one piece per line in id order. Joey puts its four specials first (unk, pad, bos,
    # eos), skipping them where they recur, so the pieces keep their names and the size stays the same.
    sp = prepared.tgt_model
    pieces = [sp.sp.id_to_piece(i) for i in range(len(sp))]
    for piece in pieces:
        if len(piece.splitlines()) != 1:  # Joey reads the file with str.splitlines()
            raise SystemExit(f"bench: SentencePiece piece {piece!r} would break Joey's vocabulary file")
    joey_vocab = root / "joey_vocab.txt"
    joey_vocab.write_text("".join(p + "\n" for p in pieces), encoding="utf-8")

    # Joey's training pairs: its max_length (100) filter on subword lengths, nothing else.
    def lengths(path: Path) -> list[int]:
        lines = path.read_text(encoding="utf-8").split("\n")[:-1]
        return [len(ids) for ids in sp.encode(lines)]

    raw_src, raw_tgt = lengths(root / "plain" / f"train.{SRC}"), lengths(root / "plain" / f"train.{TGT}")
    keep = [i for i, (a, b) in enumerate(zip(raw_src, raw_tgt)) if 0 < a <= 100 and 0 < b <= 100]
    src_len, tgt_len = with_eos(prepared.train.src_lengths), with_eos(prepared.train.tgt_lengths)
    batches = make_batches(src_len, tgt_len, s.max_tokens, seed=s.seed, epoch=0)
    return Data(plain=root / "plain", prep_exp=prep_exp, spm_model=prep_exp / "spm" / "joint.model",
                joey_vocab=joey_vocab, valid_prefix=valid_prefix, test_prefix=test_prefix, vocab_size=len(sp),
                src_lengths=src_len.tolist(), tgt_lengths=tgt_len.tolist(),
                joey_src_lengths=[with_eos(raw_src[i]) for i in keep],
                joey_tgt_lengths=[with_eos(raw_tgt[i]) for i in keep],
                ours_batch_tokens=[int(np.sum(tgt_len[b])) for b in batches])


def joey_batches(src_lengths: list[int], tgt_lengths: list[int], batch_size: int, seed: int) -> list[int]:
    """Real target tokens of each batch of Joey's `TokenBatchSampler` over one shuffled epoch.

    Joey counts `max(src + 1, trg + 1)` per sentence with padding (lengths here already count the +1), closes
    a batch once `longest * n >= batch_size`, and does not bucket by length.
    """
    import numpy as np

    order = np.random.default_rng(seed).permutation(len(src_lengths))
    out, longest, n, real = [], 0, 0, 0
    for i in order:
        longest = max(longest, src_lengths[i], tgt_lengths[i])
        n += 1
        real += tgt_lengths[i]
        if longest * n >= batch_size:
            out.append(real)
            longest, n, real = 0, 0, 0
    if n:
        out.append(real)
    return out


def match_joey_batch_size(data: Data, seed: int) -> int:
    """The smallest Joey token `batch_size` whose mean real target tokens per update reaches ours."""
    target = sum(data.ours_batch_tokens) / len(data.ours_batch_tokens)

    def mean_real(size: int) -> float:
        counts = joey_batches(data.joey_src_lengths, data.joey_tgt_lengths, size, seed)
        return sum(counts) / len(counts)

    low, high = 64, 64
    while mean_real(high) < target:
        low, high = high, high * 2
    while high - low > 16:
        mid = (low + high) // 2
        low, high = (mid, high) if mean_real(mid) < target else (low, mid)
    return high


def ensure_peer(s: Settings) -> Path:
    """Joey NMT 2.3.0 in a virtual environment of its own in the cache; installed once, then reused."""
    venv = s.cache / "joey-venv"
    python = venv / "bin" / "python"
    marker = venv / ".bench-ready"
    wanted = json.dumps(PEER_PACKAGES)
    freeze = s.cache / "joey-freeze.txt"  # the exact peer stack, for the record
    if marker.exists() and marker.read_text() == wanted and python.exists():
        if not freeze.exists():
            freeze.write_text(subprocess.run([str(python), "-m", "pip", "freeze"], capture_output=True,
                                             text=True).stdout)
        return python
    install_log = s.cache / "joey-install.log"
    log.info("installing %s into %s (once; a few minutes; log in %s)", PEER, venv, install_log)
    with open(install_log, "a", encoding="utf-8") as out:
        def step(*command: str) -> None:
            out.write(f"$ {' '.join(command)}\n")
            out.flush()
            if subprocess.run(list(command), stdout=out, stderr=subprocess.STDOUT).returncode != 0:
                raise SystemExit(f"bench: `{' '.join(command)}` failed; see {install_log}")

        if not python.exists():
            step(shutil.which("python3") or sys.executable, "-m", "venv", str(venv))
        for packages in PEER_PACKAGES:
            step(str(python), "-m", "pip", "install", *packages)
        step(str(python), "-c", "import torch, joeynmt.training, joeynmt.prediction; "
             "assert torch.__version__.startswith('2.13.0'), torch.__version__")
        freeze.write_text(subprocess.run([str(python), "-m", "pip", "freeze"], capture_output=True,
                                         text=True).stdout)
    marker.write_text(wanted)
    return python


def _joey_model_section(m: ModelConfig) -> dict:
    """The bench model in Joey's terms; what Joey cannot express differently is refused, not approximated."""
    if (m.cell, m.attention, m.bridge, m.tie_embeddings, m.enc_layers, m.dec_layers) != (
            "gru", "bahdanau", "final", "none", 1, 1) or m.attention_dim != m.dec_hidden or not m.input_feeding:
        raise SystemExit(f"bench: Joey's side is written for the GRU/Bahdanau bench model, not {m}")
    embeddings = {"embedding_dim": m.emb_dim, "scale": m.scale_embeddings, "dropout": m.emb_dropout}
    return {
        "initializer": "xavier_uniform", "bias_initializer": "zeros", "init_gain": 1.0,
        "embed_initializer": "xavier_uniform", "embed_init_gain": 1.0,
        "tied_embeddings": False, "tied_softmax": False,
        "encoder": {"type": "recurrent", "rnn_type": "lstm", "hidden_size": m.enc_hidden, "bidirectional": True,
                    "num_layers": 1, "dropout": m.dropout, "embeddings": embeddings},
        "decoder": {"type": "recurrent", "rnn_type": m.cell, "hidden_size": m.dec_hidden, "num_layers": 1,
                    "attention": m.attention, "input_feeding": True, "init_hidden": "bridge",
                    "dropout": m.dropout, "hidden_dropout": m.dropout, "embeddings": dict(embeddings)},
    }


def joey_config(s: Settings, data: Data, model_dir: Path, batch_size: int, updates: int, valid_every: int,
                test_prefix: Path | None = None) -> dict:
    """Joey NMT's config for the bench model: the same data, SentencePiece model and architecture as ours."""
    side = lambda lang: {  # noqa: E731
        "lang": lang, "level": "bpe", "lowercase": False, "max_length": 100, "voc_file": str(data.joey_vocab),
        "tokenizer_type": "sentencepiece", "tokenizer_cfg": {"model_file": str(data.spm_model)}}
    return {
        "name": model_dir.name,
        "joeynmt_version": "2.3.0",
        "model_dir": str(model_dir),
        "use_cuda": s.device.startswith("cuda"),
        "fp16": False,
        "random_seed": s.seed,
        "data": {
            "train": str(data.plain / "train"), "dev": str(data.valid_prefix),
            "test": str(test_prefix or data.test_prefix), "dataset_type": "plain",
            "src": side(SRC), "trg": side(TGT),
        },
        "testing": {
            "n_best": 1, "beam_size": s.beam, "beam_alpha": s.beam_alpha, "batch_size": s.decode_batch_tokens,
            "batch_type": "token", "max_output_length": -1, "eval_metrics": ["bleu"],
            "sacrebleu_cfg": {"tokenize": "13a"},
        },
        "training": {
            "optimizer": "adam", "adam_betas": [0.9, 0.999], "learning_rate": s.lr, "learning_rate_min": 1e-8,
            # Joey 2.3.0 insists on a scheduler: an exponential decay by 1.0 per epoch is a constant rate.
            "scheduling": "exponential", "decrease_factor": 1.0,
            "clip_grad_norm": s.clip_norm, "label_smoothing": s.label_smoothing, "loss": "crossentropy",
            "normalization": "tokens", "batch_size": batch_size, "batch_type": "token", "batch_multiplier": 1,
            "epochs": 1000, "updates": updates, "validation_freq": valid_every,
            "logging_freq": math.gcd(valid_every, 10), "early_stopping_metric": "bleu", "keep_best_ckpts": 1,
            "shuffle": True, "overwrite": True, "print_valid_sents": [0],
        },
        "model": _joey_model_section(bench_model()),
    }
