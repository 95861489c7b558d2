"""Beam search that sentences join and leave between its steps (continuous batching), for `nmt serve`.

Why: a service's clients send a sentence or a few at a time. A search over what is queued runs until its longest
sentence ends: the others' rows leave as they finish, so most of its steps serve a few sentences, and the clients
answered early wait for the stragglers before their next sentences can start. Here a sentence joins the running
search at the next step after it arrives and its answer leaves the step it is done, so a step serves about as many
sentences as there are clients. (Orca, Yu et al. 2022, schedules a Transformer's iterations the same way.)

Every sentence gets exactly what `nmt.search`'s beam search gives it alone: its own step count, length limits,
candidates and scores are kept per sentence, and a sentence decodes the same in any batch (`nmt.translator`),
including one whose members come and go. Sentences that join are encoded as a batch of their own and appended
(`Ensemble.absorb`), then all are put in order of source length, which spares attention most of the padding. The
tokens (and attention) of each hypothesis are kept per row, a short list per row: a service's searches hold tens of
sentences, not the thousands of a file's batch.

Plain beam search only (beam >= 2, no sampling, constraints, prefixes, greedy floor or shortlist): the
service sends everything else through `Translator.translate_encoded`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from collections.abc import Sequence
from typing import Generic, TypeVar

import numpy as np
import torch

from nmt.config import DecodeConfig
from nmt.data.collate import pad_sources
from nmt.ensemble import Ensemble, SearchStats
from nmt.precision import autocast
from nmt.search import Hypothesis, _candidates, _restrict, _survivors, max_lengths, ranking_scores
from nmt.tokens import BOS, EOS

Tag = TypeVar("Tag")


def streams(decode: DecodeConfig, has_shortlist: bool) -> bool:
    """Whether `BeamStream` decodes with these options exactly as `nmt.search` does."""
    return decode.beam >= 2 and decode.temperature is None and not decode.greedy_floor and not has_shortlist


@dataclass
class _Sentence(Generic[Tag]):
    tag: Tag  # the caller's name for it
    src_len: int  # source subwords, EOS included
    max_len: int  # longest output, EOS left out (`nmt.search.max_lengths`)
    step: int = 0
    finished: list[Hypothesis] = field(default_factory=list)


class BeamStream(Generic[Tag]):
    """A running beam search: `admit` sentences, `step` until `live` is 0; each step returns the sentences that
    ended at it with their `nbest` hypotheses, best first, as `nmt.search.Search.generate` would have."""

    def __init__(self, models: list, decode: DecodeConfig, device: torch.device, dtype: torch.dtype,
                 with_attention: bool = False):
        if not streams(decode, False):
            raise ValueError("a stream runs plain beam search (beam >= 2, no sampling, no greedy floor)")
        self.models, self.decode, self.device, self.dtype = models, decode, device, dtype
        self.k = decode.beam
        self.with_attention = with_attention and all(m.decoder.attention is not None for m in models)
        self.stats = SearchStats()
        self._clear()

    def _clear(self) -> None:
        self.ens: Ensemble | None = None
        self.sentences: list[_Sentence[Tag]] = []  # live, in the order of their rows (k each)
        self.scores = torch.empty(0, device=self.device)  # (rows,) model scores of the live hypotheses
        self.prev = torch.empty(0, dtype=torch.long, device=self.device)  # (rows,) tokens fed at the next step
        self.tokens: list[list[int]] = []  # per row: the tokens fed after BOS
        self.attention: list[list[torch.Tensor]] = []  # per row, with attention: (src_len,) per step so far

    @property
    def live(self) -> int:
        return len(self.sentences)

    def admit(self, sources: Sequence[Sequence[int] | np.ndarray], tags: list[Tag]) -> None:
        """Sentences (subword ids without EOS, each non-empty) join the search at its next step."""
        src, src_lengths = pad_sources([np.asarray(ids, dtype=np.int64) for ids in sources])
        with torch.inference_mode(), autocast(self.device, self.dtype):
            joining = Ensemble(self.models, src.to(self.device), src_lengths, self.decode.coverage_penalty > 0,
                               self.stats, weights=None if self.ens is None else self.ens.weights)
            joining.expand(self.k)
            if self.ens is None:
                self.ens = joining
            else:
                self.ens.absorb(joining)
            scores = torch.full((len(sources), self.k), -math.inf, device=self.device)
            scores[:, 0] = 0.0  # a sentence's beams start identical: only beam 0 expands at its first step
            self.scores = torch.cat([self.scores, scores.view(-1)])
            self.prev = torch.cat([self.prev, torch.full((len(sources) * self.k,), BOS, device=self.device)])
        limits = max_lengths(src_lengths, self.decode.max_len_a, self.decode.max_len_b, self.decode.min_len)
        self.sentences += [_Sentence(tag, int(n), int(m)) for tag, n, m in zip(tags, src_lengths, limits)]
        self.tokens += [[] for _ in range(len(sources) * self.k)]
        if self.with_attention:
            self.attention += [[] for _ in range(len(sources) * self.k)]
        self._sort_by_source_length()

    def _sort_by_source_length(self) -> None:
        """Keep the sentences (and their rows) in order of source length, so that attention's chunks, each as
        long as its longest source, skip most of the padding (`nmt.model.attention`). In arrival order, the
        padding was 45% of a 16-sentence stream's attention term (test2016 sentences); the reordering, one
        copy of the states at each joining, costs far less. A sentence's result does not depend on its row."""
        lengths = [s.src_len for s in self.sentences]
        order = sorted(range(len(lengths)), key=lengths.__getitem__)
        if all(i == j for i, j in enumerate(order)):
            return
        assert self.ens is not None
        sentences = torch.tensor(order, device=self.device)
        rows = (sentences.unsqueeze(1) * self.k + torch.arange(self.k, device=self.device)).view(-1)
        with torch.inference_mode():
            self.ens.keep_sentences(sentences)
            self.ens.reorder(rows, encoder=False)
            self.scores, self.prev = self.scores[rows], self.prev[rows]
        moved = rows.tolist()
        self.tokens = [self.tokens[r] for r in moved]
        if self.with_attention:
            self.attention = [self.attention[r] for r in moved]
        self.sentences = [self.sentences[i] for i in order]

    def step(self) -> list[tuple[Tag, list[Hypothesis]]]:
        """One decoder step for every live sentence; the sentences done at it leave."""
        if self.ens is None:
            return []
        with torch.inference_mode(), autocast(self.device, self.dtype):
            return self._step(self.ens)

    def _step(self, ens: Ensemble) -> list[tuple[Tag, list[Hypothesis]]]:
        k = self.k
        log_probs, attn = ens.step(self.prev)  # (rows, vocab), (rows, src_len)
        steps = torch.tensor([s.step for s in self.sentences], device=self.device).repeat_interleave(k)
        maxes = torch.tensor([s.max_len for s in self.sentences], device=self.device).repeat_interleave(k)
        _restrict(log_probs, steps, self.decode.min_len, maxes, ens.eos_column, ens.banned_columns)
        top_scores, candidate_rows, next_columns = _candidates(self.scores, log_probs, k)  # (live, 2k) each
        next_tokens = ens.to_tokens(next_columns)
        is_eos = next_tokens == EOS
        finishing = is_eos[:, :k] & (top_scores[:, :k] > -math.inf)  # (live, k)
        if finishing.any():
            where_sent, where_beam = finishing.nonzero(as_tuple=True)
            self._finish(ens, where_sent.tolist(), candidate_rows[where_sent, where_beam],
                         top_scores[where_sent, where_beam], attn)
        done = [len(s.finished) >= k or s.step >= s.max_len for s in self.sentences]
        ended = [(s.tag, sorted(s.finished, key=lambda h: -h.score)[: self.decode.nbest])
                 for s, d in zip(self.sentences, done) if d]
        if all(done):
            self._clear()
            return ended
        rows, scores_next, tokens_next = _survivors(is_eos, k, candidate_rows, top_scores, next_tokens)
        if ended:
            alive = torch.tensor([i for i, d in enumerate(done) if not d], device=self.device)
            rows, scores_next, tokens_next = rows[alive], scores_next[alive], tokens_next[alive]
            self.sentences = [s for s, d in zip(self.sentences, done) if not d]
            ens.keep_sentences(alive)
            ens.trim_source()
        parents = rows.view(-1)
        ens.reorder(parents, encoder=False)
        self.scores, self.prev = scores_next.view(-1), tokens_next.view(-1)
        fed, moved = self.prev.tolist(), parents.tolist()
        self.tokens = [self.tokens[p] + [t] for p, t in zip(moved, fed)]
        if self.with_attention and attn is not None:
            self.attention = [self.attention[p] + [attn[p]] for p in moved]
        for sentence in self.sentences:
            sentence.step += 1
        return ended

    def _finish(self, ens: Ensemble, sentences: list[int], rows: torch.Tensor, log_probs: torch.Tensor,
                attn: torch.Tensor | None) -> None:
        """The hypotheses at `rows` end with EOS: scored as `nmt.search` scores them, kept with their sentence."""
        row_list = rows.tolist()
        lengths = torch.tensor([len(self.tokens[r]) + 1 for r in row_list], device=log_probs.device)
        coverage = ens.coverage()
        scores = ranking_scores(log_probs, lengths, self.decode, None if coverage is None else coverage[rows],
                                ens.row_mask(rows))
        for i, row, lp, score in zip(sentences, row_list, log_probs.tolist(), scores.tolist()):
            sentence = self.sentences[i]
            attention = None
            if self.with_attention and attn is not None:
                steps = self.attention[row] + [attn[row]]
                attention = torch.stack([a[: sentence.src_len] for a in steps]).cpu()
            sentence.finished.append(Hypothesis(list(self.tokens[row]), score, lp, attention))
