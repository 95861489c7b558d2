"""nmt.constraints: constraints and prefixes encoded from text, and the tracker that counts them met, checked
against a definition written without it (`constraint_fixtures.satisfies`)."""

from __future__ import annotations

import random

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from nmt.constraints import (MAX_CONSTRAINTS, MAX_PHRASE_SUBWORDS, Phrase, encode_phrase, encode_prefix,
                             encode_target, failure_links, word_continuations)
from nmt.data.subword import Subword
from nmt.errors import NMTError
from nmt.tokens import MAX_LINE_SUBWORDS, UNK
from constraint_fixtures import phrases_strategy, satisfies, track
from translation_fixtures import synthetic_sentences, tiny_spm

ALPHABET = [4, 5, 6, 7]
SEQUENCES = st.lists(st.sampled_from(ALPHABET), max_size=12)


@given(st.lists(st.sampled_from([4, 5]), min_size=1, max_size=12))
def test_failure_links_are_the_longest_proper_borders(ids: list[int]) -> None:
    fail = failure_links(ids)
    for q in range(1, len(ids) + 1):
        borders = [b for b in range(q) if ids[:b] == ids[q - b : q]]
        assert fail[q] == max(borders)


@settings(max_examples=300, deadline=None)
@given(phrases_strategy(ALPHABET), SEQUENCES, st.booleans())
def test_what_the_tracker_counts_met_is_really_there(phrases, tokens, ordered) -> None:
    """Soundness: every phrase the tracker counts has an occurrence of its own, in order when asked."""
    met = track(tokens, phrases, ordered)
    assert satisfies(tokens, [p for p, m in zip(phrases, met) if m], ordered)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.sampled_from(ALPHABET), min_size=1, max_size=3), max_size=3), SEQUENCES,
       st.booleans())
def test_phrases_without_common_subwords_are_met_whenever_they_occur(groups, tokens, ordered) -> None:
    """Completeness where the greedy reading cannot go wrong: phrases that share no subword."""
    phrases, used = [], set()
    for ids in groups:
        if not used & set(ids):
            phrases.append(Phrase(tuple(ids)))
            used |= set(ids)
    assert all(track(tokens, phrases, ordered)) == satisfies(tokens, phrases, ordered)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([4, 5]), min_size=1, max_size=4), st.lists(st.sampled_from([4, 5, 6]), max_size=12))
@example([4, 4, 5], [4, 4, 4, 5]).via("a match that restarts inside a false start")
def test_one_phrase_is_met_exactly_where_it_occurs(ids, tokens) -> None:
    """False starts and self-overlapping phrases (`4 4 5` in `4 4 4 5`) are followed by the failure links."""
    occurs = any(tokens[i : i + len(ids)] == ids for i in range(len(tokens)))
    assert track(tokens, [Phrase(tuple(ids))]) == [occurs]


@settings(max_examples=300, deadline=None)
@given(phrases_strategy(ALPHABET, word_end=True), SEQUENCES, st.sets(st.sampled_from(ALPHABET)))
def test_a_whole_word_phrase_followed_by_a_continuing_piece_is_not_met(phrases, tokens, continues) -> None:
    met = track(tokens, phrases, continues=continues)
    assert satisfies(tokens, [p for p, m in zip(phrases, met) if m], continues=continues)


def test_each_occurrence_meets_one_phrase() -> None:
    red, car = Phrase((4, 5)), Phrase((5,))
    assert track([4, 5], [car, red]) == [False, True]  # `car` inside the met `red car` does not count twice
    assert track([4, 5, 5], [car, red]) == [True, True]
    assert track([5], [car, car]) == [True, False]  # a phrase listed twice must appear twice
    assert track([4, 4, 5], [red]) == [True]  # a false start
    assert track([4, 6, 4, 7], [Phrase((4, 6)), Phrase((4, 7))]) == [True, True]  # two phrases that begin alike
    assert track([5, 4, 5], [red, car], ordered=True) == [True, False]  # ordered: the `car` before is too early
    assert track([4, 5, 5], [red, car], ordered=True) == [True, True]


# ------------------------------------------------------------------------------------------- text to subwords


@pytest.fixture(scope="module")
def spm() -> Subword:
    return Subword(tiny_spm())


def test_a_phrase_has_the_pieces_it_has_as_words_inside_a_sentence(spm: Subword) -> None:
    """SentencePiece cuts each space-separated word on its own: the phrase's pieces are a run of the pieces of
    any sentence it stands in as words."""
    rng = random.Random(0)
    for sentence in synthetic_sentences(200, seed=7):
        words = sentence.split()
        start = rng.randrange(len(words))
        phrase = " ".join(words[start : start + rng.randint(1, 2)])
        ids = list(encode_phrase(spm, phrase, "test").ids)
        pieces = spm.encode([sentence])[0]
        assert any(pieces[i : i + len(ids)] == ids for i in range(len(pieces)))


def test_a_phrase_counts_only_as_whole_words_where_sentencepiece_cuts_it_otherwise(spm: Subword) -> None:
    """The cases where a phrase's pieces inside a sentence are not its own: glued after a character, `ömika`
    is `▁ö m i k a`, not `ö` + `▁mi k a`; and in `mikaso` the pieces `▁mi k a` are followed by `s o`, which
    continue the word. Neither spells the word `mika`, and the tracker counts neither (the search then writes
    the word)."""
    phrase = encode_phrase(spm, "mika", "test")
    assert spm.encode_pieces("mika") == ["▁mi", "k", "a"] and phrase.word_end
    continues = {i for i, c in enumerate(word_continuations(spm).tolist()) if c}
    glued, longer, alone = (spm.encode([text])[0] for text in ("ka ömika", "ka mikaso", "ka mika so"))
    assert phrase.ids[0] not in glued and track(glued, [phrase], continues=continues, vocab=len(spm)) == [False]
    assert track(longer, [phrase], continues=continues, vocab=len(spm)) == [False]
    assert track(longer, [phrase], vocab=len(spm)) == [True]  # without the word rule `mikaso` would count
    assert track(alone, [phrase], continues=continues, vocab=len(spm)) == [True]


def test_the_word_rule_knows_which_pieces_continue_a_word(spm: Subword) -> None:
    continues = word_continuations(spm)
    for i in range(len(spm)):
        piece = spm.sp.id_to_piece(i)
        assert bool(continues[i]) == (i > 3 and piece[0].isalnum() and not piece.startswith("▁"))
    assert 0 < int(continues.sum()) < len(spm)
    assert encode_phrase(spm, "kalo ", "x").word_end


@pytest.mark.parametrize("text, message", [
    ("", "constraint is empty"), ("   ", "constraint is empty"),
    ("kaΩlo", "characters the target vocabulary lacks ('Ω')"),
    (" ".join(["kalomi"] * MAX_PHRASE_SUBWORDS), f"more than the {MAX_PHRASE_SUBWORDS}"),
])
def test_a_bad_constraint_is_a_user_error_naming_where_it_is(spm: Subword, text: str, message: str) -> None:
    with pytest.raises(NMTError, match="^in.de line 3: constraint 2: ") as err:
        encode_target(spm, ["ka", text], None, "in.de line 3")
    assert message in str(err.value)


def test_too_many_constraints_and_bad_prefixes_are_user_errors(spm: Subword) -> None:
    with pytest.raises(NMTError, match=f"line 1: {MAX_CONSTRAINTS + 1} constraints, more than"):
        encode_target(spm, ["ka"] * (MAX_CONSTRAINTS + 1), None, "line 1")
    with pytest.raises(NMTError, match="p.en line 2: the prefix 'Ω' has characters"):
        encode_target(spm, None, "Ω", "in.de line 2", "p.en line 2")
    with pytest.raises(NMTError, match=f"more than the {MAX_LINE_SUBWORDS}"):
        encode_prefix(spm, "ka " * (MAX_LINE_SUBWORDS + 1), "line 1")
    with pytest.raises(NMTError, match="a list of strings, got a string"):
        encode_target(spm, "kalo", None, "line 1")
    assert encode_target(spm, [], "", "line 1") is None and UNK not in encode_prefix(spm, "ka lo", "x")
