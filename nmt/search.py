"""Greedy search, beam search and sampling, batched over sentences and beams, for one model or an ensemble.

Beam search follows fairseq's layout: the `batch x beam` hypotheses live in one flat dimension of size
`batch * beam`, so one decoder step serves them all; one `topk` over `beam * vocab` per sentence picks the
next hypotheses, and `index_select` reorders the decoder states. A hypothesis that emits EOS is moved to its
sentence's list of finished hypotheses; a sentence is done once it has `beam` finished hypotheses (or reaches
its maximum length), and done sentences leave the batch so no compute is spent on them.

Options are bound once: a `Search` is built from a `DecodeConfig` (as fairseq's `SequenceGenerator` takes its
options in its constructor) and `generate` takes only data. Adding a decoding option touches the config, the
search and the command-line flag, nothing in between.

Scores. The model score of a hypothesis is the sum of its token log-probabilities, EOS included. Ranking uses
`log_prob / lp(length) + cp`, where length counts EOS, `lp` is 1 (`none`), `length ** alpha` (`average`) or
`((5 + length) / 6) ** alpha` (`gnmt`, Wu et al. 2016), and `cp` is the GNMT coverage penalty
`beta * sum_j log(min(coverage_j, 1))` over the source positions. Both apply to finished hypotheses only,
as in GNMT; while searching, hypotheses of one length compete on their model scores.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from nmt.config import DecodeConfig, check_bounds, check_decode
from nmt.ensemble import Ensemble, SearchStats
from nmt.errors import NMTError
from nmt.model.seq2seq import Seq2Seq
from nmt.shortlist import Shortlist
from nmt.tokens import BOS, EOS, MAX_LINE_SUBWORDS, PAD
from nmt.constraints import Targets  # after the others: the search's own imports stay as they were

log = logging.getLogger(__name__)

LENGTH_PENALTIES = ("none", "average", "gnmt")


@dataclass
class Hypothesis:
    """One output sentence of the search."""

    tokens: list[int]  # target ids, without EOS
    score: float  # the ranking score: log_prob normalised for length, plus the coverage penalty
    log_prob: float  # the model score: sum of the token log-probabilities, EOS included
    attention: torch.Tensor | None = None  # (len(tokens) + 1, src_len) on the CPU; the last row is EOS's


@contextmanager
def _eval_mode(models: list[Seq2Seq]) -> Iterator[None]:
    """Dropout off while searching (validation calls search in the middle of training), restored after."""
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)


def max_lengths(src_lengths: torch.Tensor, a: float, b: int, min_len: int) -> torch.Tensor:
    """(batch,) longest output (without EOS) per sentence: a * |src| + b, where |src| counts the source's EOS,
    at most `MAX_LINE_SUBWORDS` (a search's time grows with it) and never below min_len, so that the forced EOS
    at the maximum never contradicts the minimum."""
    limit = (a * src_lengths.double() + b).floor().long().clamp(max=MAX_LINE_SUBWORDS)
    return limit.clamp(min=max(min_len, 0))


def length_divisor(lengths: torch.Tensor, kind: str, alpha: float) -> torch.Tensor:
    """The divisor of a hypothesis's log-probability; `lengths` count EOS, so they are never 0."""
    lengths = lengths.double()
    if kind == "none" or alpha == 0:
        return torch.ones_like(lengths)
    if kind == "average":
        return lengths**alpha
    if kind == "gnmt":
        return ((5.0 + lengths) / 6.0) ** alpha
    raise NMTError(f"length penalty must be one of {', '.join(LENGTH_PENALTIES)}, got {kind!r}")


def coverage_term(coverage: torch.Tensor, src_mask: torch.Tensor, beta: float) -> torch.Tensor:
    """GNMT's beta * sum_j log(min(coverage_j, 1)) over real source positions: (rows, src_len) -> (rows,)."""
    logs = coverage.double().clamp(min=1e-10, max=1.0).log().masked_fill(~src_mask, 0.0)
    return beta * logs.sum(-1)


def ranking_scores(log_probs: torch.Tensor, lengths: torch.Tensor, decode: DecodeConfig,
                   coverage: torch.Tensor | None, src_mask: torch.Tensor) -> torch.Tensor:
    """Finished hypotheses' model scores (n,), lengths (n,) with EOS, coverage and source mask (n, src_len) ->
    their ranking scores (n,) float64: `log_prob / lp(length) + cp` (the module docstring)."""
    scores = log_probs.double() / length_divisor(lengths, decode.length_penalty, decode.alpha)
    if decode.coverage_penalty and coverage is not None:
        scores = scores + coverage_term(coverage, src_mask, decode.coverage_penalty)
    return scores


def _restrict(log_probs: torch.Tensor, step: int | torch.Tensor, min_len: int, row_max_len: torch.Tensor,
              eos: int = EOS, banned: tuple[int, ...] = (PAD, BOS)) -> torch.Tensor:
    """Forbid PAD and BOS always, EOS before `min_len`, everything but EOS from a row's maximum length on.

    log_probs: (rows, columns) log-probabilities or logits, changed in place; step: every row's, or (rows,) each
    row's own (`nmt.stream`: sentences start at different steps); row_max_len: (rows,); `eos` and `banned` are
    column indices (a shortlist's columns are not token ids, and leave PAD and BOS out).
    """
    for column in banned:
        log_probs[:, column] = -math.inf
    if isinstance(step, int):
        if step < min_len:
            log_probs[:, eos] = -math.inf
    elif min_len > 0:
        log_probs[(step < min_len).nonzero().squeeze(1), eos] = -math.inf
    forced = step >= row_max_len  # (rows,)
    if bool(forced.any()):  # most steps force no row: spare them a pass over (rows, vocab)
        rows = forced.nonzero().squeeze(1)
        kept = log_probs[rows, eos]
        log_probs[rows] = -math.inf
        log_probs[rows, eos] = kept
    return log_probs


class _Finisher:
    """Turns finished rows into `Hypothesis` objects, each in its sentence's list."""

    def __init__(self, batch: int, src_lengths: torch.Tensor, decode: DecodeConfig, with_attention: bool):
        self.hyps: list[list[Hypothesis]] = [[] for _ in range(batch)]
        self.src_lengths = src_lengths.tolist()
        self.decode = decode
        self.with_attention = with_attention

    def add(self, sentences: torch.Tensor, log_probs: torch.Tensor, tokens: torch.Tensor,
            coverage: torch.Tensor | None, src_mask: torch.Tensor, attention: torch.Tensor | None) -> None:
        """sentences: (n,) original indices; log_probs: (n,); tokens: (n, t) without EOS; coverage and
        src_mask: (n, src_len); attention: (n, t + 1, src_len)."""
        lengths = torch.full_like(log_probs, tokens.size(1) + 1, dtype=torch.long)
        scores = ranking_scores(log_probs, lengths, self.decode, coverage, src_mask)
        attention = attention.cpu() if self.with_attention and attention is not None else None
        for i, (sent, lp, score, toks) in enumerate(zip(sentences.tolist(), log_probs.tolist(), scores.tolist(),
                                                        tokens.tolist())):
            attn = attention[i, :, : self.src_lengths[sent]].clone() if attention is not None else None
            self.hyps[sent].append(Hypothesis(toks, score, lp, attn))

    def add_rows(self, ens: Ensemble, rows: torch.Tensor, sentences: torch.Tensor, log_probs: torch.Tensor,
                 trail: _Trail) -> None:
        """Finish the hypotheses whose states are rows `rows` of `ens`, their tokens and attention read back
        from `trail`; sentences and log_probs: (n,) as in `add`."""
        coverage = ens.coverage()
        tokens, attention = trail.trace(rows)
        self.add(sentences, log_probs, tokens, None if coverage is None else coverage[rows], ens.row_mask(rows),
                 attention)

    def best(self, nbest: int) -> list[list[Hypothesis]]:
        return [sorted(h, key=lambda x: -x.score)[:nbest] for h in self.hyps]


class _Trail:
    """What each row of a search fed and attended to, step by step, with back-pointers to the row it came from
    at the step before: a hypothesis's tokens (and attention) are read back once, when it finishes, instead of
    every row's whole history being copied at every step."""

    def __init__(self, with_attention: bool):
        self.with_attention = with_attention
        self.parents: list[torch.Tensor | None] = []  # per step: (rows,) row at the step before, None at step 0
        self.inputs: list[torch.Tensor] = []  # per step: (rows,) token fed (BOS at step 0)
        self.attention: list[torch.Tensor] = []  # per step: (rows, src_len)

    def push(self, parents: torch.Tensor | None, inputs: torch.Tensor, attention: torch.Tensor | None) -> None:
        self.parents.append(parents)
        self.inputs.append(inputs)
        if self.with_attention and attention is not None:
            self.attention.append(attention)

    def trace(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """rows (n,) of the current step -> their tokens (n, steps - 1), BOS left out, and their attention
        (n, steps, src_len) or None."""
        tokens, attention = [], []
        for step in range(len(self.inputs) - 1, -1, -1):
            tokens.append(self.inputs[step][rows])
            if self.attention:
                attention.append(self.attention[step][rows])
            parents = self.parents[step]
            rows = parents[rows] if parents is not None else rows
        tokens_out = torch.stack(tokens[::-1][1:], dim=1) if len(tokens) > 1 else \
            torch.empty(rows.numel(), 0, dtype=torch.long, device=rows.device)
        return tokens_out, torch.stack(attention[::-1], dim=1) if attention else None


def _candidates(scores: torch.Tensor, log_probs: torch.Tensor, k: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The 2k best extensions of each live sentence's k hypotheses: scores (live * k,) and restricted
    log_probs (live * k, vocab) -> the candidates' scores, parent rows and tokens, each (live, 2k), best first.

    Each row's 2k best tokens are picked first (a row's order does not depend on its score), so the scores are
    added to (rows, 2k) candidates, not to a whole (rows, vocab) tensor written and read again. Two candidates
    per beam guarantee k that do not end, since each beam has a single EOS.
    """
    rows, vocab = log_probs.shape
    live, per_row = rows // k, min(2 * k, vocab)
    top_log_probs, top_tokens = log_probs.topk(per_row, dim=1)  # (rows, per_row)
    flat = (scores.unsqueeze(1) + top_log_probs).view(live, k * per_row)
    top_scores, index = flat.topk(2 * k, dim=1)  # (live, 2k)
    parents = torch.div(index, per_row, rounding_mode="floor") + (torch.arange(live, device=scores.device) * k
                                                                   ).unsqueeze(1)
    return top_scores, parents, top_tokens.view(live, k * per_row).gather(1, index)


def _survivors(is_eos: torch.Tensor, k: int, *candidates: torch.Tensor) -> list[torch.Tensor]:
    """The k best candidates that do not end, (live, k) each: the smallest positions among the non-EOS ones."""
    live = is_eos.size(0)
    position = torch.arange(2 * k, device=is_eos.device).expand(live, 2 * k)
    keep_pos = (position + is_eos.long() * 2 * k).topk(k, dim=1, largest=False).values  # (live, k)
    return [c.gather(1, keep_pos) for c in candidates]


def _searching(method: Callable) -> Callable:
    """Run a search method in inference mode, with its models in eval mode; an empty batch gives []."""

    @functools.wraps(method)
    def wrapper(self: Search, models: list[Seq2Seq], src: torch.Tensor, *args: object, **kwargs: object) -> object:
        if src.size(0) == 0:
            return []
        with torch.inference_mode(), _eval_mode(models):
            return method(self, models, src, *args, **kwargs)

    return wrapper


class Search:
    """Greedy search, beam search or sampling, as a `DecodeConfig` says, bound once.

    `generate(models, src, src_lengths)` translates a padded batch with one model or an ensemble: src
    (batch, src_len) ending in EOS, src_lengths (batch,) on the CPU -> for each sentence its `nbest` hypotheses,
    best first. Beam 1 is greedy search; a `temperature` switches to sampling (`nbest` samples per sentence).
    The models are put in eval mode for the search and restored after, so validation can run mid-training.

    Beam search is not exact: on rare sentences greedy's prefix falls out of the beam and greedy's sentence
    scores higher. `greedy_floor` also runs greedy search (about 1/beam more work) and keeps its sentence when
    it scores higher, so that beam search never returns a lower score than greedy.
    """

    def __init__(self, decode: DecodeConfig, shortlist: Shortlist | None = None):
        if decode.length_penalty not in LENGTH_PENALTIES:
            raise NMTError(f"length penalty must be one of {', '.join(LENGTH_PENALTIES)}, "
                           f"got {decode.length_penalty!r}")
        check_bounds(decode, lambda name: name)
        check_decode(decode, lambda name: name)
        self.decode = decode
        self.shortlist = shortlist  # restricts each sentence's output to its lexical shortlist (nmt/shortlist.py)
        self.stats = SearchStats()
        self._said_full_vocabulary = False

    @_searching
    def generate(self, models: list[Seq2Seq], src: torch.Tensor, src_lengths: torch.Tensor,
                 with_attention: bool = False, generator: torch.Generator | None = None,
                 targets: Targets | None = None) -> list[list[Hypothesis]]:
        """`with_attention` keeps each hypothesis's attention matrix; `generator` draws the samples; `targets`
        (constraints, prefixes) send the batch to `nmt.dba`'s constrained beam search."""
        decode = self.decode
        if targets is not None:
            from nmt.dba import ConstrainedSearch  # here: nmt.dba builds on this module

            if self.shortlist is not None and not self._said_full_vocabulary:
                # a constraint's or a prefix's subwords need not be in the source's shortlist
                log.warning("lines with constraints or a prefix are searched over the whole vocabulary, "
                            "not their shortlist")
                self._said_full_vocabulary = True

            return ConstrainedSearch(decode, self.stats).generate(models, src, src_lengths, targets, with_attention)
        if decode.temperature is not None:
            return self._one_path(models, src, src_lengths, self._sampler(generator), decode.nbest, with_attention)
        if decode.beam == 1:
            return self._one_path(models, src, src_lengths, _argmax, 1, with_attention)
        hyps = self._beam(models, src, src_lengths, with_attention)
        if decode.greedy_floor:
            greedy = self._one_path(models, src, src_lengths, _argmax, 1, with_attention)
            for sentence, (best_greedy,) in zip(hyps, greedy):
                if all(h.tokens != best_greedy.tokens for h in sentence):
                    sentence.append(best_greedy)
                    sentence.sort(key=lambda h: -h.score)
                    del sentence[decode.nbest:]
        return hyps

    @_searching
    def beam_search(self, models: list[Seq2Seq], src: torch.Tensor, src_lengths: torch.Tensor,
                    with_attention: bool = False) -> list[list[Hypothesis]]:
        """Beam search whatever the beam, 1 included (`generate` takes the faster greedy path there)."""
        return self._beam(models, src, src_lengths, with_attention)

    @_searching
    def greedy_search(self, models: list[Seq2Seq], src: torch.Tensor, src_lengths: torch.Tensor,
                      with_attention: bool = False) -> list[list[Hypothesis]]:
        """The most likely token at each step, whatever the beam: one hypothesis per sentence."""
        return self._one_path(models, src, src_lengths, _argmax, 1, with_attention)

    def _sampler(self, generator: torch.Generator | None) -> Callable[[torch.Tensor], torch.Tensor]:
        """Draws from the model's distribution sharpened (temperature < 1) or flattened (> 1), optionally limited
        to the `topk` most likely tokens, then to the nucleus: the fewest most likely tokens whose probability
        reaches `topp`. Scores stay the model's (untempered) log-probabilities."""
        temperature, topk, topp = self.decode.temperature, self.decode.topk, self.decode.topp

        def choose(log_probs: torch.Tensor) -> torch.Tensor:
            logits = log_probs / temperature  # (rows, vocab)
            if 0 < topk < logits.size(-1):
                kth = logits.topk(topk, dim=-1).values[:, -1:]  # (rows, 1)
                logits = logits.masked_fill(logits < kth, -math.inf)
            probs = torch.softmax(logits, dim=-1)
            if topp < 1.0:
                sorted_probs, order = probs.sort(dim=-1, descending=True)
                outside = sorted_probs.cumsum(-1) - sorted_probs >= topp  # the more likely ones already reach topp
                probs = probs.masked_fill(torch.zeros_like(outside).scatter_(-1, order, outside), 0.0)
            return torch.multinomial(probs, 1, generator=generator).squeeze(1)

        return choose

    def _beam(self, models: list[Seq2Seq], src: torch.Tensor, src_lengths: torch.Tensor,
              with_attention: bool) -> list[list[Hypothesis]]:
        """Beam search over a batch -> `nbest` hypotheses per sentence, best first. Works for any beam >= 1
        (greedy search is the faster path for beam 1)."""
        decode, device = self.decode, src.device
        batch, k = src.size(0), decode.beam
        ens = Ensemble(models, src, src_lengths, decode.coverage_penalty > 0, self.stats, self.shortlist)
        ens.expand(k)
        finisher = _Finisher(batch, src_lengths, decode, with_attention)
        trail = _Trail(with_attention and ens.has_attention)
        sent_ids = torch.arange(batch, device=device)  # (live,) original index of each live sentence
        sent_max = max_lengths(src_lengths, decode.max_len_a, decode.max_len_b, decode.min_len).to(device)
        n_finished = torch.zeros(batch, dtype=torch.long, device=device)  # (live,)
        # All beams of a sentence start identical: only beam 0 may expand at the first step.
        scores = torch.full((batch, k), -math.inf, device=device)
        scores[:, 0] = 0.0
        scores = scores.view(-1)  # (live * k,) model scores of the live hypotheses
        prev = torch.full((batch * k,), BOS, dtype=torch.long, device=device)
        parents = None  # (live * k,) each row's row at the step before
        for step in range(int(sent_max.max()) + 1):
            log_probs, attn = ens.step(prev)  # (live * k, columns), (live * k, src_len)
            trail.push(parents, prev, attn)
            _restrict(log_probs, step, decode.min_len, sent_max.repeat_interleave(k), ens.eos_column,
                      ens.banned_columns)
            top_scores, candidate_rows, next_columns = _candidates(scores, log_probs, k)  # (live, 2k) each
            next_tokens = ens.to_tokens(next_columns)
            is_eos = next_tokens == EOS
            # Finish the EOS candidates that rank among the k best of their sentence.
            finishing = is_eos[:, :k] & (top_scores[:, :k] > -math.inf)  # (live, k)
            if finishing.any():
                where_sent, where_beam = finishing.nonzero(as_tuple=True)
                finisher.add_rows(ens, candidate_rows[where_sent, where_beam], sent_ids[where_sent],
                                  top_scores[where_sent, where_beam], trail)
                n_finished += finishing.sum(1)
            done = (n_finished >= k) | (step >= sent_max)  # (live,)
            if done.all():
                break
            rows, scores_next, tokens_next = _survivors(is_eos, k, candidate_rows, top_scores, next_tokens)
            if done.any():
                alive = (~done).nonzero().squeeze(1)
                rows, scores_next, tokens_next = rows[alive], scores_next[alive], tokens_next[alive]
                sent_ids, sent_max, n_finished = sent_ids[alive], sent_max[alive], n_finished[alive]
                ens.keep_sentences(alive)
            parents = rows.view(-1)
            ens.reorder(parents, encoder=False)
            scores, prev = scores_next.view(-1), tokens_next.view(-1)
        return finisher.best(decode.nbest)

    def _one_path(self, models: list[Seq2Seq], src: torch.Tensor, src_lengths: torch.Tensor,
                  choose: Callable[[torch.Tensor], torch.Tensor], copies: int,
                  with_attention: bool) -> list[list[Hypothesis]]:
        """Extend each row by `choose(log_probs (rows, vocab)) -> (rows,)` until EOS;
        `copies` rows per sentence. Rows that end leave the batch at once. Scores are normalised like beam
        search's, so that beam 1 and greedy agree exactly."""
        decode, device = self.decode, src.device
        batch = src.size(0)
        ens = Ensemble(models, src, src_lengths, decode.coverage_penalty > 0, self.stats, self.shortlist)
        finisher = _Finisher(batch, src_lengths, decode, with_attention)
        trail = _Trail(with_attention and ens.has_attention)
        row_sent = torch.arange(batch, device=device).repeat_interleave(copies)  # (rows,) original sentence
        if copies > 1:
            ens.reorder(row_sent, encoder=True)
        row_max = max_lengths(src_lengths, decode.max_len_a, decode.max_len_b, decode.min_len).to(device)[row_sent]
        scores = torch.zeros(row_sent.numel(), device=device)
        prev = torch.full((row_sent.numel(),), BOS, dtype=torch.long, device=device)
        parents = None  # rows that stayed, after some ended; None while every row goes on
        for step in range(int(row_max.max()) + 1):
            log_probs, attn = ens.step(prev)  # (rows, columns), (rows, src_len)
            trail.push(parents, prev, attn)
            _restrict(log_probs, step, decode.min_len, row_max, ens.eos_column, ens.banned_columns)
            column = choose(log_probs)  # (rows,)
            scores = scores + log_probs.gather(1, column.unsqueeze(1)).squeeze(1)
            chosen = ens.to_tokens(column)
            ended = chosen == EOS
            parents = None
            if ended.any():
                rows = ended.nonzero().squeeze(1)
                finisher.add_rows(ens, rows, row_sent[rows], scores[rows], trail)
                if bool(ended.all()):
                    break
                parents = (~ended).nonzero().squeeze(1)
                ens.reorder(parents, encoder=True)
                row_sent, row_max, scores, chosen = row_sent[parents], row_max[parents], scores[parents], \
                    chosen[parents]
            prev = chosen
        return finisher.best(copies)


def _argmax(log_probs: torch.Tensor) -> torch.Tensor:
    return log_probs.argmax(-1)
