"""What a translation must contain: lexical constraints and a target prefix, as subwords, and the tracker that
follows, for many hypotheses at once, how far each one has got through its constraints.

A constraint is a target phrase that must appear in the output. It is given as text and encoded with the
target SentencePiece model standing alone, so its first piece carries the word-start mark `▁`. SentencePiece
cuts each space-separated word on its own, so these are the phrase's pieces wherever it stands as words in a
sentence (after a space or at the start, before a space, punctuation or the end). Glued to a preceding character
the same letters are other pieces (`"dog"` is `▁"` `d` `og` `"` where `dog` alone is `▁dog`): such an occurrence
does not count, and the search writes the phrase as words. At its end, a phrase that ends in a letter or digit
is met only where its last word ends too: `▁dog` followed by a piece that continues the word (`s`) spells
`dogs`, not `dog`, so the tracker waits for the next piece (`Targets.continues_word` says which pieces continue
a word) before it counts the phrase.

Each constraint is met by an occurrence of its own, and occurrences never share a subword: a phrase listed
twice must appear twice, and `car` inside a met `red car` does not also meet `car`. Once met, a phrase may
appear again, as the model likes. The tracker reads the output left to right and follows every unmet phrase at
once with Knuth-Morris-Pratt failure links, so a false start (`red red car`) or two phrases that begin alike
(`red car`, `red hat`) lose nothing; when one completes, its subwords are used up and every other phrase starts
afresh (the longest completed phrase wins a tie). With `ordered_constraints` the phrases must appear in their
given order: only the first unmet one advances.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from nmt.data.subword import Subword
from nmt.errors import NMTError
from nmt.tokens import MAX_LINE_SUBWORDS, UNK

# Bounds on untrusted input: the search's state grows with constraints x subwords per phrase for every candidate.
MAX_CONSTRAINTS = 64  # per sentence
MAX_PHRASE_SUBWORDS = 64  # per constraint


@dataclass(frozen=True)
class Phrase:
    """One constraint: subword ids that must appear, contiguous, in the output."""

    ids: tuple[int, ...]
    text: str = ""
    word_end: bool = False  # its text ends in a letter or digit: met only where its last word ends as well


@dataclass(frozen=True)
class Target:
    """What one sentence's translation must hold: its constraints and the subwords it starts with."""

    constraints: tuple[Phrase, ...] = ()
    prefix: tuple[int, ...] = ()

    @property
    def size(self) -> int:
        """Subwords of all constraints: the top bank of dynamic beam allocation."""
        return sum(len(p.ids) for p in self.constraints)


@dataclass
class Targets:
    """A batch's targets, one per sentence (None: nothing asked), and the target vocabulary's word rule:
    `continues_word` (vocab,) is True for pieces that continue the word before them (None: no word rule)."""

    sentences: list[Target | None]
    continues_word: torch.Tensor | None = None


@functools.lru_cache(maxsize=8)
def word_continuations(spm: Subword) -> torch.Tensor:
    """(vocab,) True for the pieces that continue a word: no `▁` in front, a letter or digit first. Cached per
    SentencePiece model: every constrained batch asks for it."""
    flags = []
    for i in range(len(spm)):
        piece = spm.sp.id_to_piece(i)
        special = spm.sp.is_control(i) or spm.sp.is_unknown(i)
        flags.append(not special and not piece.startswith("▁") and piece[:1].isalnum())
    return torch.tensor(flags, dtype=torch.bool)


def _unknown_characters(spm: Subword, text: str) -> str:
    return "".join(sorted({c for c in text if not c.isspace() and UNK in spm.encode([c])[0]}))


def _target_ids(spm: Subword, text: object, where: str, what: str, most: int) -> list[int]:
    """`text` as target subwords, checked: a string, written with the target vocabulary, at most `most` subwords."""
    if not isinstance(text, str):
        raise NMTError(f"{where}: {what} must be a string, got {type(text).__name__}")
    ids = spm.encode([text])[0]
    if UNK in ids:
        raise NMTError(f"{where}: {what} {text!r} has characters the target vocabulary lacks "
                       f"({_unknown_characters(spm, text)!r})")
    if len(ids) > most:
        raise NMTError(f"{where}: {what} has {len(ids)} subwords, more than the {most} it may have")
    return ids


def encode_phrase(spm: Subword, text: str, where: str) -> Phrase:
    """A constraint's text as target subwords; `where` names it in errors ("in.de line 3: constraint 2")."""
    ids = _target_ids(spm, text, where, "the constraint", MAX_PHRASE_SUBWORDS)
    if not ids:
        raise NMTError(f"{where}: the constraint is empty")
    return Phrase(tuple(ids), text, text.rstrip()[-1:].isalnum())


def encode_prefix(spm: Subword, text: str | None, where: str) -> tuple[int, ...]:
    """A target prefix as subwords, cut as the start of a sentence (empty or None: no prefix)."""
    return () if text is None else tuple(_target_ids(spm, text, where, "the prefix", MAX_LINE_SUBWORDS))


def encode_target(spm: Subword, constraints: Sequence[str] | None, prefix: str | None, where: str,
                  prefix_where: str | None = None) -> Target | None:
    """One sentence's constraints and prefix as a `Target` (None when there are neither); errors name `where`
    (`prefix_where` for the prefix, where it comes from a file of its own)."""
    if isinstance(constraints, str):
        raise NMTError(f"{where}: constraints must be a list of strings, got a string")
    constraints = list(constraints or [])
    if len(constraints) > MAX_CONSTRAINTS:
        raise NMTError(f"{where}: {len(constraints)} constraints, more than the {MAX_CONSTRAINTS} a sentence "
                       "may have")
    phrases = tuple(encode_phrase(spm, text, f"{where}: constraint {j + 1}") for j, text in enumerate(constraints))
    target = Target(phrases, encode_prefix(spm, prefix, prefix_where or where))
    if target.size > MAX_LINE_SUBWORDS:
        raise NMTError(f"{where}: the constraints have {target.size} subwords, more than the {MAX_LINE_SUBWORDS} "
                       "an output may have")
    return target if target.constraints or target.prefix else None


# ----------------------------------------------------------------------------------- the tracker, on tensors


def failure_links(ids: Sequence[int]) -> list[int]:
    """Knuth-Morris-Pratt: for each matched length q (0..len), the longest proper prefix of ids[:q] that is
    also its suffix; fail[0] = 0."""
    fail = [0] * (len(ids) + 1)
    q = 0
    for i in range(1, len(ids)):
        while q and ids[i] != ids[q]:
            q = fail[q]
        q += ids[i] == ids[q]
        fail[i + 1] = q
    return fail


@dataclass
class PhraseTable:
    """Every sentence's constraints as padded tensors, one row per sentence.

    ids (n, C, L) subwords, -1 beyond a phrase; lengths (n, C), 0 for a missing phrase; fail (n, C, L + 1) the
    phrases' failure links; word_end (n, C); total (n,) the subwords of all phrases; prefix (n, P) the forced
    first subwords, -1 beyond a sentence's prefix.
    """

    ids: torch.Tensor
    lengths: torch.Tensor
    fail: torch.Tensor
    word_end: torch.Tensor
    total: torch.Tensor
    prefix: torch.Tensor

    @classmethod
    def build(cls, targets: Targets, device: torch.device) -> PhraseTable:
        sentences = [t or Target() for t in targets.sentences]
        n = len(sentences)
        c = max(1, max(len(t.constraints) for t in sentences))
        length = max([1] + [len(p.ids) for t in sentences for p in t.constraints])
        ids = torch.full((n, c, length), -1, dtype=torch.long)
        lengths = torch.zeros(n, c, dtype=torch.long)
        fail = torch.zeros(n, c, length + 1, dtype=torch.long)
        word_end = torch.zeros(n, c, dtype=torch.bool)
        prefix = torch.full((n, max([1] + [len(t.prefix) for t in sentences])), -1, dtype=torch.long)
        for i, target in enumerate(sentences):
            for j, phrase in enumerate(target.constraints):
                ids[i, j, : len(phrase.ids)] = torch.tensor(phrase.ids)
                lengths[i, j] = len(phrase.ids)
                fail[i, j, : len(phrase.ids) + 1] = torch.tensor(failure_links(phrase.ids))
                word_end[i, j] = phrase.word_end and targets.continues_word is not None
            prefix[i, : len(target.prefix)] = torch.tensor(target.prefix, dtype=torch.long)
        table = cls(ids, lengths, fail, word_end, lengths.sum(1), prefix)
        return table.select(torch.arange(n), device)

    def select(self, rows: torch.Tensor, device: torch.device | None = None) -> PhraseTable:
        """The table of sentences `rows`, on `device` (default: where it is)."""
        return PhraseTable(*(getattr(self, f.name).to(device or self.ids.device)[rows.to(device or self.ids.device)]
                             for f in dataclasses.fields(self)))


@dataclass
class RowPhrases:
    """The phrases of n rows (hypotheses, candidates), each row's looked up in its sentence's row of a
    `PhraseTable` rather than copied: a step has sentences x beam x (constraints + 4) candidates, and copying
    their (C, L) subwords and failure links each would multiply the state by L."""

    table: PhraseTable
    sentence: torch.Tensor  # (n,) the table row of each row
    lengths: torch.Tensor  # (n, C)
    word_end: torch.Tensor  # (n, C)

    @classmethod
    def of(cls, table: PhraseTable, sentence: torch.Tensor) -> RowPhrases:
        return cls(table, sentence, table.lengths[sentence], table.word_end[sentence])

    def _at(self, values: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        phrase = torch.arange(q.size(1), device=q.device).unsqueeze(0)
        return values[self.sentence.unsqueeze(1), phrase, q]

    def subword(self, q: torch.Tensor) -> torch.Tensor:
        """(n, C) matched lengths -> (n, C) each phrase's subword after them (-1 past its end)."""
        return self._at(self.table.ids, q.clamp(max=self.table.ids.size(2) - 1))

    def fallback(self, q: torch.Tensor) -> torch.Tensor:
        """(n, C) matched lengths -> (n, C) their failure links."""
        return self._at(self.table.fail, q)


def initial_met(table: PhraseTable) -> torch.Tensor:
    """(n, C): a missing phrase counts as met from the start."""
    return table.lengths == 0


def bank(met: torch.Tensor, progress: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(n,) constraint subwords produced: those of met phrases and the longest match in progress."""
    return (lengths * met).sum(1) + (progress * ~met).max(1).values


def advance(met: torch.Tensor, progress: torch.Tensor, token: torch.Tensor, rows: RowPhrases,
            continues_word: torch.Tensor | None, ordered: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The tracker's state after each row's next token: met (n, C) bool, progress (n, C) the matched length of
    each unmet phrase (its length while a whole-word phrase waits for its word to end); token (n,)."""
    pending = ~met & rows.word_end & (progress == rows.lengths)
    if continues_word is not None and bool(pending.any()):
        confirm = pending & ~continues_word[token].unsqueeze(1)
        met, progress = _complete(met, progress, confirm, rows.lengths, rows.fallback)
        still = pending & (progress == rows.lengths)  # the word goes on: fall back as after a mismatch
        progress = torch.where(still, rows.fallback(progress), progress)
    progress = _matched(progress, token, ~met & (rows.lengths > 0), rows)
    if ordered:
        unmet = ~met
        progress = progress * (unmet & (unmet.long().cumsum(1) == 1))
    complete = ~met & ~rows.word_end & (progress == rows.lengths) & (rows.lengths > 0)
    return _complete(met, progress, complete, rows.lengths, rows.fallback)


def _matched(progress: torch.Tensor, token: torch.Tensor, todo: torch.Tensor, rows: RowPhrases) -> torch.Tensor:
    """Knuth-Morris-Pratt step: for each phrase to do, the longest prefix of it that the output ends with after
    `token`, given that it ended with `progress` (< length) subwords of it. (n, C) -> (n, C)."""
    q, new = progress, torch.zeros_like(progress)
    token = token.unsqueeze(1)
    for _ in range(rows.table.ids.size(2) + 1):  # each failure link shortens the match
        hit = todo & (rows.subword(q) == token)
        new = torch.where(hit, q + 1, new)
        todo = todo & ~hit & (q > 0)
        if not bool(todo.any()):
            break
        q = torch.where(todo, rows.fallback(q), q)
    return new


def _complete(met: torch.Tensor, progress: torch.Tensor, complete: torch.Tensor, lengths: torch.Tensor,
              fallback: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows where phrases complete: the longest (then the first) is met, its subwords are used up, and every
    other phrase starts afresh; unless another phrase has a longer match going on than the completed one, which
    would then be lost: that row defers the completion (the short phrase falls back, to be met again later).
    Otherwise constraints that overlap, such as `4` and `5 4 4`, trade one for the other at every step and a
    narrow beam never meets both."""
    rows = complete.any(1)  # (n,)
    if not bool(rows.any()):
        return met, progress
    phrases = complete.size(1)
    rank = torch.where(complete, lengths * phrases + (phrases - 1 - torch.arange(phrases, device=met.device)), -1)
    chosen = torch.zeros_like(met).scatter_(1, rank.argmax(1, keepdim=True), True) & rows.unsqueeze(1)
    others = (progress * (~met & ~chosen)).max(1).values  # (n,)
    defer = rows & (others > (lengths * chosen).sum(1))
    if bool(defer.any()):
        chosen &= ~defer.unsqueeze(1)
        progress = torch.where(defer.unsqueeze(1) & complete, fallback(progress), progress)
        rows = rows & ~defer
    return met | chosen, progress.masked_fill(rows.unsqueeze(1), 0)