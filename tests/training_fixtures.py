"""Tiny training runs for the train, checkpoint and reliability tests: a config dict, running `nmt` in a real
process, and comparing the parameters of two checkpoints.

A run is a few dozen updates of a model with a few thousand parameters on the shared `tiny_corpus`, on one CPU
thread, so that it takes about a second and gives the same numbers in-process and in a subprocess.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from nmt.config import Config, config_from_dict

REPO = Path(__file__).resolve().parents[1]


def tiny_train_dict(corpus, exp_dir: Path, **sections: dict) -> dict:
    """A raw config for `corpus` (conftest's TinyCorpus): 12 updates, validation every 4, no test sets, no BLEU.

    `sections` are merged into the matching section, e.g. `train={"max_updates": 6}`."""
    raw = {
        "exp_dir": str(exp_dir),
        "data": {
            "src_lang": "de",
            "tgt_lang": "en",
            "train": {"src": str(corpus.path("train", "de")), "tgt": str(corpus.path("train", "en"))},
            "valid": {"src": str(corpus.path("valid", "de")), "tgt": str(corpus.path("valid", "en"))},
            "subword": {"vocab_size": 120, "model_type": "unigram", "joint": True},
        },
        "model": {"emb_dim": 16, "enc_hidden": 16, "dec_hidden": 32, "attention_dim": 16, "dropout": 0.3,
                  "emb_dropout": 0.3},
        "train": {"device": "cpu", "dtype": "fp32", "threads": 1, "seed": 1, "max_tokens": 256,
                  "max_updates": 12, "valid_every": 4, "valid_bleu": False, "log_every": 1, "keep_best": 2,
                  "tensorboard": False},
        "decode": {"beam": 2, "max_len_a": 1.2, "max_len_b": 5},
    }
    raw = copy.deepcopy(raw)
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return raw


def to_config(raw: dict) -> Config:
    return config_from_dict(copy.deepcopy(raw))


def write_yaml(raw: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def process_env(env: dict | None = None) -> dict:
    """The environment of a test's subprocess: this checkout's nmt, one thread, no network."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **(env or {})}


def run_process(args: list, cwd: Path, env: dict | None = None, code: str | None = None, module: str = "nmt",
                timeout: float = 180, stdin: str | None = None, stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS` (or `python -c CODE ARGS`) in a fresh process on one thread; `stdin` is its input
    text, `stdout` where its output goes (captured by default)."""
    command = [sys.executable, "-c", code] if code is not None else [sys.executable, "-m", module]
    return subprocess.run(command + [str(a) for a in args], cwd=cwd, env=process_env(env), input=stdin,
                          stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=timeout)


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """The largest absolute difference between two state dicts with the same keys."""
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0 for k in a)
