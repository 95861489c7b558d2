"""Helpers for the constraint tests: a definition of "the output holds the constraints" written independently of
the tracker, the tracker driven over one sequence, and random constraint sets."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from hypothesis import strategies as st

from nmt.constraints import Phrase, PhraseTable, RowPhrases, Target, Targets, advance, initial_met


def satisfies(tokens: Sequence[int], phrases: Sequence[Phrase], ordered: bool = False,
              continues: set[int] | None = None) -> bool:
    """Whether each phrase can be given an occurrence of its own in `tokens`: contiguous, no two sharing a
    position, in the phrases' order when `ordered`, and (with a word rule) a `word_end` phrase not followed by a
    token of `continues`. Brute force over the occurrences."""

    def occurrences(p: Phrase) -> list[int]:
        n = len(p.ids)
        return [i for i in range(len(tokens) - n + 1) if tuple(tokens[i : i + n]) == p.ids and not (
            continues is not None and p.word_end and i + n < len(tokens) and tokens[i + n] in continues)]

    def place(j: int, used: frozenset[int], after: int) -> bool:
        if j == len(phrases):
            return True
        n = len(phrases[j].ids)
        for start in occurrences(phrases[j]):
            span = frozenset(range(start, start + n))
            if not span & used and (not ordered or start >= after):
                if place(j + 1, used | span, start + n):
                    return True
        return False

    return place(0, frozenset(), 0)


def track(tokens: Sequence[int], phrases: Sequence[Phrase], ordered: bool = False,
          continues: set[int] | None = None, vocab: int = 16) -> list[bool]:
    """Which phrases the tracker (`nmt.constraints.advance`) counts as met after `tokens` and an EOS (3)."""
    mask = None if continues is None else torch.tensor([i in continues for i in range(vocab)])
    table = PhraseTable.build(Targets([Target(tuple(phrases))], mask), torch.device("cpu"))
    met, progress = initial_met(table), torch.zeros(table.lengths.shape, dtype=torch.long)
    rows = RowPhrases.of(table, torch.zeros(1, dtype=torch.long))
    for token in [*tokens, 3]:
        met, progress = advance(met, progress, torch.tensor([token]), rows, mask, ordered)
    return met[0, : len(phrases)].tolist()


def phrases_strategy(alphabet: Sequence[int], max_phrases: int = 3, max_len: int = 3,
                     word_end: bool = False) -> st.SearchStrategy[list[Phrase]]:
    phrase = st.builds(lambda ids, end: Phrase(tuple(ids), word_end=end),
                       st.lists(st.sampled_from(list(alphabet)), min_size=1, max_size=max_len),
                       st.booleans() if word_end else st.just(False))
    return st.lists(phrase, min_size=0, max_size=max_phrases)
