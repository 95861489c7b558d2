"""Beam search with lexical constraints and target prefixes: dynamic beam allocation (Post & Vilar, 2018), batched
like `nmt.search`'s beam search (sentences x beams in one flat dimension, done sentences leave the batch).

Why banks. A hypothesis that writes a constraint early pays for it at once in model score, while one that
postpones it looks better until it runs out of room. Ranked by score alone, the beam fills with postponers.
Dynamic beam allocation ranks candidates within *banks*, one per number of constraint subwords met (0 to the
sentence's total), and shares the beam out over the banks, so hypotheses at every stage of progress survive.

One step, per sentence:
1. candidates: the 2k best extensions of its k hypotheses (as in plain beam search), each hypothesis's single
   best next subword, and for each hypothesis the next subword of each unmet constraint (with
   `ordered_constraints`, of the first unmet one only); a hypothesis whose whole-word constraint waits for its
   word to end also proposes its best subword that starts a new word. Duplicates are dropped.
2. each candidate's constraint state after its subword (`nmt.constraints.advance`) gives its bank.
3. EOS is allowed only once every constraint is met, except where the maximum length forces it.
4. the beam is dealt out over the banks round-robin, from the top bank down, the best candidates of each bank
   first (Hu et al., 2019, as fairseq does): a bank with fewer candidates than its share passes the rest on.
   Dealt over all candidates, this decides which EOS candidates finish; dealt over the others, which k
   hypotheses go on.
With no constraint there is one bank and this is plain beam search (the same hypotheses; tested).

A prefix is forced: while a sentence's output is shorter than its prefix, every subword but the prefix's next is
forbidden, so the beam holds one hypothesis until the search continues from the prefix; its subwords count in
the score. A sentence's maximum length is at least its prefix. Finished hypotheses are ranked by the constraint
subwords they met, then by score; one that missed a constraint (when the maximum length came first) lists it in
`ConstrainedHypothesis.unmet`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from nmt.config import DecodeConfig
from nmt.constraints import PhraseTable, RowPhrases, Targets, advance, bank, initial_met
from nmt.errors import NMTError
from nmt.model.seq2seq import Seq2Seq
from nmt.search import Ensemble, Hypothesis, SearchStats, _Finisher, _restrict, max_lengths
from nmt.tokens import BOS, EOS, PAD

# A step's tracker holds sentences x beam x (constraints + 4) candidates x constraints states: a batch that would
# hold more is searched in parts (a sentence decodes the same in any batch), so that 64 constraints at beam 256
# cannot take the memory that batch_tokens allows for plain beam search.
MAX_TRACKER_STATES = 1 << 22


@dataclass
class ConstrainedHypothesis(Hypothesis):
    """A hypothesis with the constraints it did not meet (indices into its sentence's constraints)."""

    unmet: tuple[int, ...] = ()
    met_subwords: int = 0


class ConstrainedSearch:
    """Dynamic beam allocation over a batch, bound to a `DecodeConfig` like `nmt.search.Search` (which hands it
    the batches that come with `Targets`)."""

    def __init__(self, decode: DecodeConfig, stats: SearchStats):
        if decode.temperature is not None:
            raise NMTError("constraints and prefixes need beam search: they cannot be used with temperature sampling")
        self.decode, self.stats = decode, stats

    def generate(self, models: list[Seq2Seq], src: torch.Tensor, src_lengths: torch.Tensor, targets: Targets,
                 with_attention: bool = False) -> list[list[ConstrainedHypothesis]]:
        """src (batch, src_len), src_lengths (batch,) on the CPU, one target per sentence -> `nbest`
        hypotheses per sentence, best first. Call it in inference mode (`Search.generate` does)."""
        if len(targets.sentences) != src.size(0):
            raise ValueError(f"{len(targets.sentences)} targets for {src.size(0)} sentences")
        phrases = max([1] + [len(t.constraints) for t in targets.sentences if t is not None])
        part = max(1, MAX_TRACKER_STATES // (self.decode.beam * (phrases + 4) * phrases))
        if src.size(0) > part:
            return [hyps for start in range(0, src.size(0), part) for hyps in self.generate(
                models, src[start : start + part], src_lengths[start : start + part],
                Targets(targets.sentences[start : start + part], targets.continues_word), with_attention)]
        hyps = self._search(models, src, src_lengths, targets, with_attention, self.decode.beam)
        if self.decode.greedy_floor and self.decode.beam > 1:  # the greedy floor is constrained greedy search
            greedy = self._search(models, src, src_lengths, targets, with_attention, 1)
            for sentence, (best_greedy,) in zip(hyps, greedy):
                if all(h.tokens != best_greedy.tokens for h in sentence):
                    sentence.append(best_greedy)
                    sentence.sort(key=_rank)
                    del sentence[self.decode.nbest:]
        return hyps

    def _search(self, models: list[Seq2Seq], src: torch.Tensor, src_lengths: torch.Tensor, targets: Targets,
                with_attention: bool, k: int) -> list[list[ConstrainedHypothesis]]:
        decode, batch = self.decode, src.size(0)
        ens = Ensemble(models, src, src_lengths, coverage=decode.coverage_penalty > 0, stats=self.stats)
        ens.reorder(torch.arange(batch, device=src.device).repeat_interleave(k), encoder=True)
        finisher = _MetFinisher(batch, src_lengths, decode, with_attention)
        beams = _Beams.start(src, src_lengths, targets, k, decode, with_attention and ens.has_attention)
        continues = None if targets.continues_word is None else targets.continues_word.to(src.device)
        for step in range(int(beams.sent_max.max()) + 1):
            log_probs, attn = ens.step(beams.prev)  # (live * k, vocab), (live * k, src_len)
            _restrict(log_probs, step, decode.min_len, beams.sent_max.repeat_interleave(k))
            _force_prefix(log_probs, step, beams.table.prefix.repeat_interleave(k, dim=0))
            if beams.history is not None:
                beams.history = torch.cat([beams.history, attn.unsqueeze(1)], dim=1)
            cand = _candidates(beams, log_probs, k, continues, decode.ordered_constraints)  # (live, M) each
            is_eos = cand.tokens == EOS
            early = (step < beams.sent_max).unsqueeze(1)  # (live, 1): EOS is not forced yet
            cand.scores = cand.scores.masked_fill(is_eos & early & ~cand.all_met, -math.inf)

            chosen = _allocate(cand.scores, cand.bank, beams.table.total, k)  # (live, k)
            ending = is_eos.gather(1, chosen) & (cand.scores.gather(1, chosen) > -math.inf)
            if ending.any():
                where_sent, where_beam = ending.nonzero(as_tuple=True)
                picked = chosen[where_sent, where_beam]
                flat = where_sent * cand.tokens.size(1) + picked
                finisher.add_met(ens, cand.parents[where_sent, picked], beams.sent_ids[where_sent],
                                 cand.scores[where_sent, picked], beams.tokens, beams.history, cand.met[flat],
                                 beams.table.lengths[where_sent])
                beams.n_finished += ending.sum(1)

            done = (beams.n_finished >= k) | (step >= beams.sent_max)  # (live,)
            if done.all():
                break
            survivors = _allocate(cand.scores.masked_fill(is_eos, -math.inf), cand.bank, beams.table.total, k)
            beams = beams.follow(survivors, cand, done, ens)
        return finisher.best_met(decode.nbest)


@dataclass
class _Candidates:
    """One step's candidates, (live, M) each: parent rows, subwords, scores, banks, whether every constraint
    is met; and their tracker states, (live * M, C)."""

    parents: torch.Tensor
    tokens: torch.Tensor
    scores: torch.Tensor
    bank: torch.Tensor
    all_met: torch.Tensor
    met: torch.Tensor
    progress: torch.Tensor


@dataclass
class _Beams:
    """The live sentences' hypotheses: k rows per sentence, in one flat dimension of live * k rows."""

    sent_ids: torch.Tensor  # (live,) original index of each live sentence
    sent_max: torch.Tensor  # (live,) longest output, at least the prefix
    n_finished: torch.Tensor  # (live,)
    table: PhraseTable  # one row per live sentence
    scores: torch.Tensor  # (live * k,) model scores
    tokens: torch.Tensor  # (live * k, step)
    history: torch.Tensor | None  # (live * k, step, src_len) attention, when kept
    met: torch.Tensor  # (live * k, C)
    progress: torch.Tensor  # (live * k, C)
    prev: torch.Tensor  # (live * k,)

    @classmethod
    def start(cls, src: torch.Tensor, src_lengths: torch.Tensor, targets: Targets, k: int, decode: DecodeConfig,
              keep_attention: bool) -> _Beams:
        device, batch = src.device, src.size(0)
        table = PhraseTable.build(targets, device)
        sent_max = max_lengths(src_lengths, decode.max_len_a, decode.max_len_b, decode.min_len).to(device)
        sent_max = torch.maximum(sent_max, (table.prefix >= 0).sum(1))
        scores = torch.full((batch, k), -math.inf, device=device)
        scores[:, 0] = 0.0  # the beams of a sentence start identical: only beam 0 expands at first
        met = initial_met(table).repeat_interleave(k, dim=0)
        history = torch.empty(batch * k, 0, src.size(1), device=device) if keep_attention else None
        return cls(torch.arange(batch, device=device), sent_max, torch.zeros(batch, dtype=torch.long, device=device),
                   table, scores.view(-1), torch.empty(batch * k, 0, dtype=torch.long, device=device), history, met,
                   torch.zeros(met.shape, dtype=torch.long, device=device),
                   torch.full((batch * k,), BOS, dtype=torch.long, device=device))

    def follow(self, survivors: torch.Tensor, cand: _Candidates, done: torch.Tensor, ens: Ensemble) -> _Beams:
        """The hypotheses of the chosen candidates, survivors (live, k); the sentences that are `done` leave."""
        width = cand.tokens.size(1)
        flat = survivors + torch.arange(survivors.size(0), device=survivors.device).unsqueeze(1) * width
        rows, tokens, scores = (t.gather(1, survivors) for t in (cand.parents, cand.tokens, cand.scores))
        live = self
        shrink = bool(done.any())
        if shrink:
            alive = (~done).nonzero().squeeze(1)
            rows, tokens, scores, flat = rows[alive], tokens[alive], scores[alive], flat[alive]
            live = dataclasses.replace(self, sent_ids=self.sent_ids[alive], sent_max=self.sent_max[alive],
                                       n_finished=self.n_finished[alive], table=self.table.select(alive))
        rows, flat = rows.view(-1), flat.view(-1)
        ens.reorder(rows, encoder=shrink)
        return dataclasses.replace(
            live, scores=scores.view(-1), tokens=torch.cat([self.tokens[rows], tokens.view(-1, 1)], dim=1),
            history=None if self.history is None else self.history[rows], met=cand.met[flat],
            progress=cand.progress[flat], prev=tokens.view(-1))


def _force_prefix(log_probs: torch.Tensor, step: int, prefix: torch.Tensor) -> None:
    """Rows whose prefix goes on at this step may only write its next subword. log_probs (rows, vocab), changed in
    place; prefix (rows, P), -1 beyond a row's prefix."""
    if step >= prefix.size(1):
        return
    forced = prefix[:, step]  # (rows,)
    rows = (forced >= 0).nonzero().squeeze(1)
    if rows.numel():
        keep = log_probs[rows, forced[rows]]
        log_probs[rows] = -math.inf
        log_probs[rows, forced[rows]] = keep


def _candidates(beams: _Beams, log_probs: torch.Tensor, k: int, continues: torch.Tensor | None,
                ordered: bool) -> _Candidates:
    """Step 1 and 2 of the module docstring: log_probs (live * k, vocab) -> the candidates, (live, M)."""
    n, vocab = log_probs.shape
    live = n // k
    total = beams.scores.unsqueeze(1) + log_probs  # (n, vocab)
    row = torch.arange(n, device=log_probs.device).view(live, k)
    top_index = total.view(live, k * vocab).topk(2 * k, dim=1).indices
    parents = [top_index // vocab + row[:, :1], row]
    tokens = [top_index % vocab, total.argmax(1).view(live, k)]
    hyps = RowPhrases.of(beams.table, torch.arange(live, device=row.device).repeat_interleave(k))
    unmet = ~beams.met
    can = unmet & (beams.progress < hyps.lengths)  # (n, C) phrases that a next subword advances
    if ordered:
        can &= unmet.long().cumsum(1) == 1
    phrases = can.size(1)
    parents.append(row.repeat_interleave(phrases, dim=1))
    tokens.append(hyps.subword(beams.progress).masked_fill(~can, PAD).view(live, k * phrases))  # PAD: -inf
    waiting = (unmet & hyps.word_end & (beams.progress == hyps.lengths)).any(1)  # (n,)
    if continues is not None and bool(waiting.any()):
        rows = waiting.nonzero().squeeze(1)
        ends = torch.full((n,), PAD, dtype=torch.long, device=row.device)
        ends[rows] = total[rows].masked_fill(continues, -math.inf).argmax(1)
        parents.append(row)
        tokens.append(ends.view(live, k))
    parents_t, tokens_t = torch.cat(parents, dim=1), torch.cat(tokens, dim=1)  # (live, M)
    scores = _without_duplicates(total.view(-1)[parents_t * vocab + tokens_t], parents_t * vocab + tokens_t)
    width = tokens_t.size(1)
    flat_parents = parents_t.view(-1)
    cands = RowPhrases.of(beams.table, torch.arange(live, device=row.device).repeat_interleave(width))
    met, progress = advance(beams.met[flat_parents], beams.progress[flat_parents], tokens_t.view(-1), cands,
                            continues, ordered)
    return _Candidates(parents_t, tokens_t, scores, bank(met, progress, cands.lengths).view(live, width),
                       met.all(1).view(live, width), met, progress)


def _without_duplicates(scores: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """scores (live, M) with all but one of the candidates of equal key (parent row and subword) set to -inf."""
    sorted_keys, order = keys.sort(dim=1, stable=True)
    repeat = torch.zeros_like(sorted_keys, dtype=torch.bool)
    repeat[:, 1:] = sorted_keys[:, 1:] == sorted_keys[:, :-1]
    return scores.masked_fill(torch.zeros_like(repeat).scatter_(1, order, repeat), -math.inf)


def _allocate(scores: torch.Tensor, banks: torch.Tensor, top: torch.Tensor, k: int) -> torch.Tensor:
    """Deal k places over the banks: scores and banks (live, M), top (live,) the top bank -> (live, k) positions
    of the chosen candidates. The i-th best of every bank (top bank first) comes before the (i+1)-th best of
    any; candidates scoring -inf come last (dead rows, when there are fewer than k others)."""
    live, width = scores.shape
    by_score = scores.argsort(dim=1, descending=True, stable=True)
    bank_of = banks.gather(1, by_score).masked_fill(scores.gather(1, by_score) == -math.inf, -1)
    by_bank = bank_of.argsort(dim=1, descending=True, stable=True)
    order, bank_sorted = by_score.gather(1, by_bank), bank_of.gather(1, by_bank)  # by bank, then by score
    position = torch.arange(width, device=scores.device).expand(live, width)
    first = torch.ones_like(bank_sorted, dtype=torch.bool)
    first[:, 1:] = bank_sorted[:, 1:] != bank_sorted[:, :-1]
    rank = position - torch.where(first, position, 0).cummax(1).values  # rank within the bank
    key = rank * (top.unsqueeze(1) + 1) + (top.unsqueeze(1) - bank_sorted)
    key = key.masked_fill(bank_sorted < 0, (width + 1) * (int(top.max()) + 2))
    return order.gather(1, key.topk(k, dim=1, largest=False).indices)


class _MetFinisher(_Finisher):
    """`_Finisher` that also keeps which constraints each finished hypothesis met."""

    def __init__(self, *args: object, **kwargs: object):
        super().__init__(*args, **kwargs)
        self.met: list[list[tuple[tuple[bool, ...], int]]] = [[] for _ in self.hyps]

    def add_met(self, ens: Ensemble, rows: torch.Tensor, sentences: torch.Tensor, log_probs: torch.Tensor,
                tokens: torch.Tensor, history: torch.Tensor | None, met: torch.Tensor, lengths: torch.Tensor) -> None:
        """Finish the hypotheses of rows `rows` of `ens` (an encoder per row), their tokens `tokens[rows]` and
        attention `history[rows]`; sentences, log_probs (n,), met and the phrases' lengths (n, C)."""
        coverage = ens.coverage()
        self.add(sentences, log_probs, tokens[rows], None if coverage is None else coverage[rows], ens.src_mask[rows],
                 None if history is None else history[rows])
        for sent, m, subwords in zip(sentences.tolist(), met.tolist(), (met * lengths).sum(1).tolist()):
            self.met[sent].append((tuple(m), subwords))

    def best_met(self, nbest: int) -> list[list[ConstrainedHypothesis]]:
        out = []
        for hyps, mets in zip(self.hyps, self.met):
            done = [ConstrainedHypothesis(**{f.name: getattr(h, f.name) for f in dataclasses.fields(Hypothesis)},
                                          unmet=tuple(j for j, ok in enumerate(m) if not ok), met_subwords=subwords)
                    for h, (m, subwords) in zip(hyps, mets)]
            out.append(sorted(done, key=_rank)[:nbest])
        return out


def _rank(h: ConstrainedHypothesis) -> tuple[int, float]:
    return -h.met_subwords, -h.score
