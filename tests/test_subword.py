"""nmt.data.subword: SentencePiece training with fixed special ids, and the wrapper around a model."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import sentencepiece as spm

from nmt.config import SubwordConfig
from nmt.data.subword import Subword, train_subword
from nmt.tokens import BOS, EOS, PAD, UNK
from nmt.errors import NMTError


@pytest.fixture(scope="module")
def sentences(tiny_corpus) -> list[str]:
    return [s for pair in tiny_corpus.train for s in pair]


@pytest.fixture(scope="module", params=["unigram", "bpe"])
def model(request, sentences) -> Subword:
    return Subword(train_subword(iter(sentences), SubwordConfig(vocab_size=100, model_type=request.param)))


def test_special_ids_are_fixed(model: Subword):
    assert (PAD, UNK, BOS, EOS) == (0, 1, 2, 3)
    assert model.id_to_piece([PAD, UNK, BOS, EOS]) == ["<pad>", "<unk>", "<s>", "</s>"]


def test_vocabulary_size_is_at_most_requested(model: Subword):
    assert 4 < len(model) <= 100


def test_encode_decode_round_trip(model: Subword, sentences: list[str]):
    ids = model.encode(sentences)
    assert model.decode(ids) == sentences
    assert all(4 <= i < len(model) for sentence in ids for i in sentence)  # no special id in running text


def test_unknown_characters_map_to_unk(model: Subword):
    (ids,) = model.encode(["\u4e2d"])
    assert UNK in ids


def test_pieces_match_ids(model: Subword, sentences: list[str]):
    (ids,) = model.encode(sentences[:1])
    assert model.encode_pieces(sentences[0]) == model.id_to_piece(ids)


def test_training_is_deterministic_and_ignores_empty_lines(sentences: list[str]):
    with_blanks = [s for sentence in sentences for s in (sentence, "", "   ")]
    cfg = SubwordConfig(vocab_size=80)
    plain = train_subword(iter(sentences), cfg)
    assert train_subword(iter(sentences), cfg) == plain
    assert train_subword(iter(with_blanks), cfg) == plain


def test_load_from_file(tmp_path: Path, model: Subword, sentences: list[str]):
    path = tmp_path / "m.model"
    path.write_bytes(model.model_bytes)
    loaded = Subword.load(str(path))
    assert loaded.model_bytes == model.model_bytes
    assert loaded.encode(sentences[:5]) == model.encode(sentences[:5])


def test_load_missing_file(tmp_path: Path):
    with pytest.raises(NMTError, match="file not found: .*none.model"):
        Subword.load(str(tmp_path / "none.model"))


def test_garbage_is_not_a_model():
    with pytest.raises(NMTError, match="not a valid SentencePiece model"):
        Subword(b"definitely not a protobuf")


def test_model_with_other_special_ids_is_rejected(sentences: list[str]):
    blob = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_writer=blob, vocab_size=60,
                                   hard_vocab_limit=False, minloglevel=2)  # spm's defaults: unk 0, bos 1, eos 2
    with pytest.raises(NMTError, match="unexpected special ids"):
        Subword(blob.getvalue())


def test_no_training_sentences_is_a_user_error():
    with pytest.raises(NMTError, match="no non-empty sentence"):
        train_subword(iter(["", "  "]), SubwordConfig(vocab_size=50))


def test_reader_error_during_training_keeps_its_message(sentences: list[str]):
    """A corpus error found while SentencePiece reads (e.g. misaligned files) reaches the user unchanged."""

    def failing():
        yield from sentences
        raise NMTError("misaligned corpus: a has 3 lines but b has 2")

    with pytest.raises(NMTError) as err:
        train_subword(failing(), SubwordConfig(vocab_size=60))
    assert str(err.value) == "misaligned corpus: a has 3 lines but b has 2"


def test_bug_during_training_is_not_disguised_as_a_user_error(sentences: list[str]):
    def buggy():
        yield sentences[0]
        raise ZeroDivisionError("a bug")

    with pytest.raises(ZeroDivisionError):
        train_subword(buggy(), SubwordConfig(vocab_size=60))
