"""Fixtures shared by every test module: a tiny synthetic parallel corpus, a config that points at it, the real
data folder (`NMT_DATA_DIR`) and a way to run the command line in-process.

Keep this file generic: fixtures that only one module needs live in that module.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from hypothesis import settings

# Property tests draw the same examples on every run (CI included): a failure reproduces, and a clean run stays
# clean. `HYPOTHESIS_PROFILE=explore` draws new ones, to look for counterexamples on purpose.
settings.register_profile("deterministic", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False, database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))

# Tests never touch the network: a Hugging Face hub id must fail fast instead of trying to download.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# The tests' matrices are tiny: one thread is faster than two, and on a loaded 2-core machine two OpenMP
# threads per process spin against each other. Set before torch is imported; subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

_LETTERS = "abcdefghijklmnopqrstuvwxyz"


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread per test even when OMP_NUM_THREADS was set otherwise; restored after."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def translate_word(word: str) -> str:
    """The synthetic 'language pair': the target word is the source word reversed, with a suffix."""
    return word[::-1] + "o"


def synthetic_pairs(n: int, seed: int, vocab_size: int = 40) -> list[tuple[str, str]]:
    """`n` pairs of random 'words'; the target is a deterministic function of the source (words translated one
    by one, order reversed), so a model can learn it and a reader can check it."""
    rng = random.Random(seed)
    vocab = sorted({"".join(rng.choice(_LETTERS) for _ in range(rng.randint(2, 6))) for _ in range(vocab_size)})
    pairs = []
    for _ in range(n):
        words = [rng.choice(vocab) for _ in range(rng.randint(3, 12))]
        pairs.append((" ".join(words), " ".join(translate_word(w) for w in reversed(words))))
    return pairs


def write_lines(path: Path, lines: list[str]) -> Path:
    """Write lines joined by `\\n` with a final newline, as UTF-8 bytes (no platform newline translation)."""
    path.write_bytes("".join(line + "\n" for line in lines).encode("utf-8"))
    return path


@dataclass(frozen=True)
class TinyCorpus:
    """Line-aligned de/en text files for train, valid and test, and the pairs written to them."""

    folder: Path
    train: list[tuple[str, str]]
    valid: list[tuple[str, str]]
    test: list[tuple[str, str]]

    def path(self, split: str, lang: str) -> Path:
        return self.folder / f"{split}.{lang}"


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> TinyCorpus:
    """A few hundred synthetic pairs on disk. Session-scoped, so treat the files as read-only: copy them first
    to change them."""
    folder = tmp_path_factory.mktemp("tiny_corpus")
    splits = {"train": synthetic_pairs(300, seed=1), "valid": synthetic_pairs(30, seed=2),
              "test": synthetic_pairs(30, seed=3)}
    for split, pairs in splits.items():
        write_lines(folder / f"{split}.de", [s for s, _ in pairs])
        write_lines(folder / f"{split}.en", [t for _, t in pairs])
    return TinyCorpus(folder, **splits)


def _merge(base: dict, extra: dict) -> dict:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def tiny_config_dict(corpus: TinyCorpus, exp_dir: Path) -> dict:
    """A minimal experiment config (as a plain dict) for `corpus`: small vocabulary, small batches."""
    return {
        "exp_dir": str(exp_dir),
        "data": {
            "src_lang": "de",
            "tgt_lang": "en",
            "train": {"src": str(corpus.path("train", "de")), "tgt": str(corpus.path("train", "en"))},
            "valid": {"src": str(corpus.path("valid", "de")), "tgt": str(corpus.path("valid", "en"))},
            "test": {"tiny": {"src": str(corpus.path("test", "de")), "tgt": str(corpus.path("test", "en"))}},
            "subword": {"vocab_size": 120, "model_type": "unigram", "joint": True},
        },
        "train": {"max_tokens": 256, "seed": 1},
    }


@pytest.fixture
def write_config(tmp_path: Path, tiny_corpus: TinyCorpus) -> Callable[..., Path]:
    """`write_config(extra=None, name="config.yaml")` writes the tiny config (with `extra` merged in, nested
    dicts by key) to tmp_path and returns its path. The experiment folder is tmp_path / "exp"."""

    def write(extra: dict | None = None, name: str = "config.yaml") -> Path:
        raw = _merge(tiny_config_dict(tiny_corpus, tmp_path / "exp"), extra or {})
        path = tmp_path / name
        path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
        return path

    return write


@pytest.fixture
def data_dir() -> Path:
    """The folder of real corpora (`$NMT_DATA_DIR`); tests that need it skip, saying why, when it is unset."""
    value = os.environ.get("NMT_DATA_DIR")
    if not value:
        pytest.skip("NMT_DATA_DIR is not set: point it at the shared data folder (e.g. ../shared/data) "
                    "to run the tests on real corpora")
    return Path(value)


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture) -> Callable[..., CliResult]:
    """Run `nmt ARGS...` in-process; argparse's SystemExit (from --help or a usage error) becomes the code."""
    from nmt.cli import main

    def run(*args: str) -> CliResult:
        capsys.readouterr()  # drop whatever the test printed before
        try:
            code = main([str(a) for a in args])
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def assert_user_error(result: CliResult, *fragments: str) -> None:
    """A user's mistake: exit code 2, exactly one line on stderr, no traceback, and the line names `fragments`."""
    assert result.code == 2, (result.code, result.err)
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    assert "Traceback" not in result.err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture
def user_error() -> Callable[..., None]:
    """`user_error(result, *fragments)`: see `assert_user_error`."""
    return assert_user_error
