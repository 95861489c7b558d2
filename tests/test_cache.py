"""nmt.data.cache: encoded corpora as flat arrays plus offsets, saved and loaded unchanged, keyed by content."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nmt.data.cache as cache
import nmt.data.prepare as prepare_module
from nmt.config import load_config
from nmt.data.cache import EncodedCorpus, _Growing, encode_pairs, hash_bytes, hash_files
from nmt.data.corpus import keep_pair
from nmt.data.prepare import encode_split
from nmt.data.subword import Subword
from nmt.errors import NMTError


class CharModel:
    """A stand-in for `Subword`: one id per character, from a vocabulary of `size` ids (4 and up are real)."""

    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size

    def encode(self, sentences: list[str]) -> list[list[int]]:
        return [[4 + (ord(c) * 7919) % (self.size - 4) for c in s.replace(" ", "")] for s in sentences]


words = st.text("abcdefgh ", max_size=30)
pair_lists = st.lists(st.tuples(words, words), max_size=40)


def _expected(pairs, model, clean=None):
    src, tgt = model.encode([s for s, _ in pairs]), model.encode([t for _, t in pairs])
    return [(i + 1, s, t) for i, (s, t) in enumerate(zip(src, tgt))
            if clean is None or keep_pair(len(s), len(t), *clean) is None]


def _as_lists(corpus: EncodedCorpus):
    return [(int(line), corpus.src(i).tolist(), corpus.tgt(i).tolist())
            for i, line in enumerate(corpus.line_numbers)]


@settings(max_examples=50, deadline=None)
@given(pairs=pair_lists, chunk=st.integers(1, 8), clean=st.none() | st.tuples(st.integers(0, 20), st.just(2.0),
                                                                               st.booleans()))
def test_encode_pairs_keeps_every_sentence_and_its_line(pairs, chunk, clean):
    model = CharModel(300)
    old_chunk, cache._CHUNK = cache._CHUNK, chunk  # several chunks even for a few pairs
    try:
        corpus, report = encode_pairs(iter(pairs), model, model, clean)
    finally:
        cache._CHUNK = old_chunk
    expected = _expected(pairs, model, clean)
    assert _as_lists(corpus) == expected
    assert len(corpus) == report.kept == len(expected)
    assert report.kept + sum(report.dropped.values()) == len(pairs)
    assert corpus.src_offsets[0] == 0 and corpus.src_offsets[-1] == len(corpus.src_tokens)
    assert np.all(np.diff(corpus.src_offsets) >= 0) and np.all(np.diff(corpus.tgt_offsets) >= 0)
    assert corpus.src_lengths.tolist() == [len(s) for _, s, _ in expected]


@pytest.mark.parametrize("vocab, dtype", [(300, np.uint16), (65536, np.uint16), (70000, np.int32)])
def test_token_dtype_is_the_smallest_that_fits(vocab: int, dtype):
    corpus, _ = encode_pairs(iter([("abc", "de")]), CharModel(vocab), CharModel(vocab))
    assert corpus.src_tokens.dtype == dtype and corpus.tgt_tokens.dtype == dtype
    assert corpus.src_offsets.dtype == np.int64


def test_memory_is_two_bytes_per_token_plus_offsets(tiny_corpus):
    """The issue's budget: 5 million pairs in well under 2 GB, so no Python lists per sentence."""
    model = CharModel(8000)
    pairs = tiny_corpus.train * 20
    corpus, _ = encode_pairs(iter(pairs), model, model)
    n_tokens = len(corpus.src_tokens) + len(corpus.tgt_tokens)
    # 2 bytes a token plus two int64 offsets a pair: at 15 subwords a side, 5M pairs take about 0.4 GB.
    assert corpus.nbytes() <= 2 * n_tokens + 2 * 8 * (len(corpus) + 1)


def test_save_load_round_trip(tmp_path: Path, tiny_corpus):
    model = CharModel(300)
    corpus, _ = encode_pairs(iter(tiny_corpus.train), model, model)
    corpus.save(tmp_path / "c.npz")
    loaded = EncodedCorpus.load(tmp_path / "c.npz")
    for name in ("src_tokens", "src_offsets", "tgt_tokens", "tgt_offsets", "line_numbers"):
        a, b = getattr(corpus, name), getattr(loaded, name)
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    assert not list(tmp_path.glob("*.tmp"))


def test_empty_corpus_round_trip(tmp_path: Path):
    corpus, report = encode_pairs(iter([]), CharModel(300), CharModel(300))
    assert len(corpus) == 0 and report.kept == 0
    corpus.save(tmp_path / "e.npz")
    assert len(EncodedCorpus.load(tmp_path / "e.npz")) == 0


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_damaged_cache_file_is_a_user_error(tmp_path: Path, tiny_corpus, damage: str):
    path = tmp_path / "train.abc.npz"
    encode_pairs(iter(tiny_corpus.train), CharModel(300), CharModel(300))[0].save(path)
    data = path.read_bytes()
    path.write_bytes({"garbage": b"PK\x03\x04 not really a zip", "truncated": data[: len(data) // 2],
                      "empty": b""}[damage])
    with pytest.raises(NMTError, match="damaged cache file.*nmt prepare"):
        EncodedCorpus.load(path)


def test_growing_array_keeps_everything_in_order():
    grow = _Growing(np.int64)
    chunks = [np.arange(k, k + size) for k, size in [(0, 40_000), (5, 1), (7, 100_000), (9, 0), (3, 70_000)]]
    for chunk in chunks:
        grow.extend(chunk)
    assert np.array_equal(grow.array(), np.concatenate(chunks))


def test_hash_files_follows_content(tmp_path: Path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("one\n")
    b.write_text("one\n")
    assert hash_files([a]) == hash_files([b])  # content, not name
    assert hash_files([a], "x") != hash_files([a], "y")
    b.write_text("one!\n")
    assert hash_files([a]) != hash_files([b])
    with pytest.raises(NMTError, match="file not found"):
        hash_files([tmp_path / "missing"])


def test_hash_bytes_separates_its_arguments():
    assert hash_bytes(b"ab", b"c") != hash_bytes(b"a", b"bc")
    assert hash_bytes(b"ab", b"c") == hash_bytes(b"ab", b"c")


# --- The cache in the experiment folder: reused when nothing changed, rebuilt when something did ---


@pytest.fixture
def spm_model(tiny_corpus) -> Subword:
    from nmt.config import SubwordConfig
    from nmt.data.subword import train_subword

    return Subword(train_subword((s for pair in tiny_corpus.train for s in pair), SubwordConfig(vocab_size=100)))


def test_cache_reused_when_nothing_changed_and_rebuilt_when_corpus_changes(
    tmp_path: Path, tiny_corpus, spm_model: Subword, monkeypatch: pytest.MonkeyPatch
):
    for lang in ("de", "en"):
        shutil.copy(tiny_corpus.path("valid", lang), tmp_path / f"valid.{lang}")
    cfg = load_config(None, [f"exp_dir={tmp_path / 'exp'}"])
    spec = load_config(None, [f"data.valid.src={tmp_path / 'valid.de'}", f"data.valid.tgt={tmp_path / 'valid.en'}"])
    spec = spec.data.valid
    exp = Path(cfg.exp_dir)

    first = encode_split(cfg, exp, "valid", spec, spm_model, spm_model, clean=False)
    (cached,) = (exp / "cache").glob("valid.*.npz")

    def must_not_encode(*args, **kwargs):
        raise AssertionError("encoded again although nothing changed")

    with monkeypatch.context() as m:
        m.setattr(prepare_module, "encode_pairs", must_not_encode)
        again = encode_split(cfg, exp, "valid", spec, spm_model, spm_model, clean=False)
    assert _as_lists(again) == _as_lists(first)

    with open(tmp_path / "valid.de", "ab") as f, open(tmp_path / "valid.en", "ab") as g:
        f.write(b"neu\n")
        g.write(b"new\n")
    changed = encode_split(cfg, exp, "valid", spec, spm_model, spm_model, clean=False)
    assert len(changed) == len(first) + 1
    (rebuilt,) = (exp / "cache").glob("valid.*.npz")  # the stale file is gone
    assert rebuilt != cached

    # Each other cleaning setting is another cache key: cleaning on, then a tighter data.max_len.
    files = [rebuilt]
    for overrides in ([], ["data.max_len=8"]):
        cleaning = load_config(None, [f"exp_dir={exp}", *overrides])
        cleaned = encode_split(cleaning, exp, "valid", spec, spm_model, spm_model, clean=True)
        (path,) = (exp / "cache").glob("valid.*.npz")
        assert path not in files, f"{overrides or 'cleaning on'}: the cache file of another setting was reused"
        files.append(path)
    assert len(cleaned) < len(changed)
    assert max(cleaned.src_lengths.max(), cleaned.tgt_lengths.max()) <= 8
