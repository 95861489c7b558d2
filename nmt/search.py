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
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch

from nmt.config import DecodeConfig, check_bounds, check_decode
from nmt.errors import NMTError
from nmt.model.decoder import DecoderState, StepWeights
from nmt.model.encoder import EncoderOutput
from nmt.model.seq2seq import Seq2Seq
from nmt.tokens import BOS, EOS, MAX_LINE_SUBWORDS, PAD
from nmt.constraints import Targets  # after the others: the search's own imports stay as they were

LENGTH_PENALTIES = ("none", "average", "gnmt")


@dataclass
class Hypothesis:
    """One output sentence of the search."""

    tokens: list[int]  # target ids, without EOS
    score: float  # the ranking score: log_prob normalised for length, plus the coverage penalty
    log_prob: float  # the model score: sum of the token log-probabilities, EOS included
    attention: torch.Tensor | None = None  # (len(tokens) + 1, src_len) on the CPU; the last row is EOS's


@dataclass
class SearchStats:
    """What a search computed, for FLOP counts: decoder steps, hypothesis rows summed over the steps (one
    hypothesis token each), and the real source positions those rows attended to."""

    steps: int = 0
    rows: int = 0
    row_src_positions: int = 0


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


class Ensemble:
    """Several models decoding in lockstep over the same rows; each keeps its own encoder output and state.

    The next-token distribution is the renormalised mean of the models' log-probabilities (a product of experts);
    with one model it is that model's distribution unchanged. Attention and coverage are averaged over the models
    that have attention.
    """

    def __init__(self, models: list[Seq2Seq], src: torch.Tensor, src_lengths: torch.Tensor, coverage: bool,
                 stats: SearchStats):
        if not models:
            raise ValueError("an ensemble needs at least one model")
        vocabularies = {m.tgt_vocab for m in models}
        if len(vocabularies) != 1:
            raise NMTError(f"ensemble models have different target vocabulary sizes: {sorted(vocabularies)}")
        self.models = models
        self.stats = stats
        self.vocab_size = models[0].tgt_vocab
        self.has_attention = any(m.decoder.attention is not None for m in models)
        self.encs: list[EncoderOutput] = []
        self.keys: list[torch.Tensor | None] = []
        self.states: list[DecoderState] = []
        # Recurrent weights in the compute dtype, cast once per batch rather than at every step.
        self.weights: list[StepWeights] = [m.decoder.step_weights(src.device) for m in models]
        for model in models:
            enc, keys = model.encode(src, src_lengths)
            state = model.decoder.init_state(enc)
            if coverage and model.decoder.attention is not None:
                state = replace(state, coverage=torch.zeros(enc.mask.shape, device=src.device))
            self.encs.append(enc)
            self.keys.append(keys)
            self.states.append(state)

    @property
    def src_mask(self) -> torch.Tensor:
        return self.encs[0].mask  # (rows, src_len)

    def step(self, prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """prev: (rows,) -> log-probabilities (rows, vocab) float32, attention (rows, src_len) float32 or None."""
        self.stats.steps += 1
        self.stats.rows += prev.numel()
        self.stats.row_src_positions += int(self.src_mask.sum())
        log_probs, attentions = [], []
        for i, model in enumerate(self.models):
            lp, self.states[i], attn = model.step(prev, self.states[i], self.encs[i], self.keys[i], self.weights[i])
            log_probs.append(lp)
            if attn is not None:
                attentions.append(attn.float())
        if len(log_probs) == 1:
            lp = log_probs[0]
        else:
            lp = torch.log_softmax(torch.stack(log_probs).mean(0), dim=-1)
        attn = torch.stack(attentions).mean(0) if attentions else None
        return lp, attn

    def coverage(self) -> torch.Tensor | None:
        """(rows, src_len) summed attention so far, averaged over the models, or None."""
        covs = [s.coverage for s in self.states if s.coverage is not None]
        return torch.stack(covs).mean(0) if covs else None

    def reorder(self, rows: torch.Tensor, encoder: bool) -> None:
        """Keep (and repeat) the rows `rows`. The encoder side only changes when rows move between sentences:
        the beams of one sentence share its encoder output, so a reorder within sentences skips it."""
        self.states = [s.index_select(rows) for s in self.states]
        if encoder:
            self.encs = [e.index_select(rows) for e in self.encs]
            self.keys = [None if k is None else k.index_select(0, rows) for k in self.keys]


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


def _restrict(log_probs: torch.Tensor, step: int, min_len: int, row_max_len: torch.Tensor) -> torch.Tensor:
    """Forbid PAD and BOS always, EOS before `min_len`, everything but EOS from a row's maximum length on.

    log_probs: (rows, vocab), changed in place; row_max_len: (rows,).
    """
    log_probs[:, PAD] = -math.inf
    log_probs[:, BOS] = -math.inf
    if step < min_len:
        log_probs[:, EOS] = -math.inf
    forced = step >= row_max_len  # (rows,)
    if bool(forced.any()):  # most steps force no row: spare them a pass over (rows, vocab)
        rows = forced.nonzero().squeeze(1)
        eos = log_probs[rows, EOS]
        log_probs[rows] = -math.inf
        log_probs[rows, EOS] = eos
    return log_probs


class _Finisher:
    """Turns finished rows into `Hypothesis` objects, each in its sentence's list."""

    def __init__(self, batch: int, src_lengths: torch.Tensor, decode: DecodeConfig, with_attention: bool):
        self.hyps: list[list[Hypothesis]] = [[] for _ in range(batch)]
        self.src_lengths = src_lengths.tolist()
        self.alpha, self.kind, self.beta = decode.alpha, decode.length_penalty, decode.coverage_penalty
        self.with_attention = with_attention

    def add(self, sentences: torch.Tensor, log_probs: torch.Tensor, tokens: torch.Tensor,
            coverage: torch.Tensor | None, src_mask: torch.Tensor, attention: torch.Tensor | None) -> None:
        """sentences: (n,) original indices; log_probs: (n,); tokens: (n, t) without EOS; coverage and
        src_mask: (n, src_len); attention: (n, t + 1, src_len)."""
        lengths = torch.full_like(log_probs, tokens.size(1) + 1, dtype=torch.long)
        scores = log_probs.double() / length_divisor(lengths, self.kind, self.alpha)
        if self.beta and coverage is not None:
            scores = scores + coverage_term(coverage, src_mask, self.beta)
        attention = attention.cpu() if self.with_attention and attention is not None else None
        for i, (sent, lp, score, toks) in enumerate(zip(sentences.tolist(), log_probs.tolist(), scores.tolist(),
                                                        tokens.tolist())):
            attn = attention[i, :, : self.src_lengths[sent]].clone() if attention is not None else None
            self.hyps[sent].append(Hypothesis(toks, score, lp, attn))

    def add_rows(self, ens: Ensemble, rows: torch.Tensor, sentences: torch.Tensor, log_probs: torch.Tensor,
                 tokens: torch.Tensor, history: torch.Tensor | None) -> None:
        """Finish the hypotheses whose states are rows `rows` of `ens` (their tokens: `tokens[rows]`, their
        attention so far: `history[rows]`); sentences and log_probs: (n,) as in `add`."""
        coverage = ens.coverage()
        self.add(sentences, log_probs, tokens[rows], None if coverage is None else coverage[rows], ens.src_mask[rows],
                 None if history is None else history[rows])

    def best(self, nbest: int) -> list[list[Hypothesis]]:
        return [sorted(h, key=lambda x: -x.score)[:nbest] for h in self.hyps]


def _candidates(scores: torch.Tensor, log_probs: torch.Tensor, k: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The 2k best extensions of each live sentence's k hypotheses: scores (live * k,) and log_probs
    (live * k, vocab) -> their scores, parent rows and tokens, each (live, 2k), best first. Two candidates per beam
    guarantee k that do not end, since each beam has a single EOS."""
    vocab = log_probs.size(-1)
    live = scores.numel() // k
    top_scores, top_index = (scores.unsqueeze(1) + log_probs).view(live, k * vocab).topk(2 * k, dim=1)
    parents = top_index // vocab + (torch.arange(live, device=scores.device) * k).unsqueeze(1)
    return top_scores, parents, top_index % vocab


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

    def __init__(self, decode: DecodeConfig):
        if decode.length_penalty not in LENGTH_PENALTIES:
            raise NMTError(f"length penalty must be one of {', '.join(LENGTH_PENALTIES)}, "
                           f"got {decode.length_penalty!r}")
        check_bounds(decode, lambda name: name)
        check_decode(decode, lambda name: name)
        self.decode = decode
        self.stats = SearchStats()

    @_searching
    def generate(self, models: list[Seq2Seq], src: torch.Tensor, src_lengths: torch.Tensor,
                 with_attention: bool = False, generator: torch.Generator | None = None,
                 targets: Targets | None = None) -> list[list[Hypothesis]]:
        """`with_attention` keeps each hypothesis's attention matrix; `generator` draws the samples; `targets`
        (constraints, prefixes) send the batch to `nmt.dba`'s constrained beam search."""
        decode = self.decode
        if targets is not None:
            from nmt.dba import ConstrainedSearch  # here: nmt.dba builds on this module

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
        decode = self.decode
        device = src.device
        batch, k = src.size(0), decode.beam
        ens = Ensemble(models, src, src_lengths, coverage=decode.coverage_penalty > 0, stats=self.stats)
        finisher = _Finisher(batch, src_lengths, decode, with_attention)

        ens.reorder(torch.arange(batch, device=device).repeat_interleave(k), encoder=True)
        sent_ids = torch.arange(batch, device=device)  # (live,) original index of each live sentence
        sent_max = max_lengths(src_lengths, decode.max_len_a, decode.max_len_b, decode.min_len).to(device)
        n_finished = torch.zeros(batch, dtype=torch.long, device=device)  # (live,)
        # All beams of a sentence start identical: only beam 0 may expand at the first step.
        scores = torch.full((batch, k), -math.inf, device=device)
        scores[:, 0] = 0.0
        scores = scores.view(-1)  # (live * k,) model scores of the live hypotheses
        tokens = torch.empty(batch * k, 0, dtype=torch.long, device=device)  # (live * k, step)
        history = torch.empty(batch * k, 0, src.size(1), device=device) \
            if with_attention and ens.has_attention else None
        prev = torch.full((batch * k,), BOS, dtype=torch.long, device=device)

        for step in range(int(sent_max.max()) + 1):
            log_probs, attn = ens.step(prev)  # (live * k, vocab), (live * k, src_len)
            _restrict(log_probs, step, decode.min_len, sent_max.repeat_interleave(k))
            if history is not None:
                history = torch.cat([history, attn.unsqueeze(1)], dim=1)  # (live * k, step + 1, src_len)
            top_scores, parents, next_tokens = _candidates(scores, log_probs, k)  # (live, 2k) each
            is_eos = next_tokens == EOS

            # Finish the EOS candidates that rank among the k best of their sentence.
            finishing = is_eos[:, :k] & (top_scores[:, :k] > -math.inf)  # (live, k)
            if finishing.any():
                where_sent, where_beam = finishing.nonzero(as_tuple=True)
                finisher.add_rows(ens, parents[where_sent, where_beam], sent_ids[where_sent],
                                  top_scores[where_sent, where_beam], tokens, history)
                n_finished += finishing.sum(1)

            done = (n_finished >= k) | (step >= sent_max)  # (live,)
            rows, scores_next, tokens_next = _survivors(is_eos, k, parents, top_scores, next_tokens)
            if done.all():
                break
            shrink = bool(done.any())
            if shrink:
                alive = (~done).nonzero().squeeze(1)
                rows, scores_next, tokens_next = rows[alive], scores_next[alive], tokens_next[alive]
                sent_ids, sent_max, n_finished = sent_ids[alive], sent_max[alive], n_finished[alive]
            rows = rows.view(-1)
            ens.reorder(rows, encoder=shrink)
            tokens = torch.cat([tokens[rows], tokens_next.view(-1, 1)], dim=1)
            history = history[rows] if history is not None else None
            scores = scores_next.view(-1)
            prev = tokens_next.view(-1)
        return finisher.best(decode.nbest)

    def _one_path(self, models: list[Seq2Seq], src: torch.Tensor, src_lengths: torch.Tensor,
                  choose: Callable[[torch.Tensor], torch.Tensor], copies: int,
                  with_attention: bool) -> list[list[Hypothesis]]:
        """Extend each row by `choose(log_probs (rows, vocab)) -> (rows,)` until EOS; `copies` rows per sentence.
        Rows that end leave the batch at once. Scores are normalised like beam search's, so that beam 1 and
        greedy agree exactly."""
        decode = self.decode
        device = src.device
        batch = src.size(0)
        ens = Ensemble(models, src, src_lengths, coverage=decode.coverage_penalty > 0, stats=self.stats)
        finisher = _Finisher(batch, src_lengths, decode, with_attention)
        row_sent = torch.arange(batch, device=device).repeat_interleave(copies)  # (rows,) original sentence
        if copies > 1:
            ens.reorder(row_sent, encoder=True)
        row_max = max_lengths(src_lengths, decode.max_len_a, decode.max_len_b, decode.min_len).to(device)[row_sent]
        scores = torch.zeros(row_sent.numel(), device=device)
        tokens = torch.empty(row_sent.numel(), 0, dtype=torch.long, device=device)
        history = torch.empty(row_sent.numel(), 0, src.size(1), device=device) \
            if with_attention and ens.has_attention else None
        prev = torch.full((row_sent.numel(),), BOS, dtype=torch.long, device=device)

        for step in range(int(row_max.max()) + 1):
            log_probs, attn = ens.step(prev)  # (rows, vocab), (rows, src_len)
            _restrict(log_probs, step, decode.min_len, row_max)
            if history is not None:
                history = torch.cat([history, attn.unsqueeze(1)], dim=1)
            chosen = choose(log_probs)  # (rows,)
            scores = scores + log_probs.gather(1, chosen.unsqueeze(1)).squeeze(1)
            ended = chosen == EOS
            if ended.any():
                rows = ended.nonzero().squeeze(1)
                finisher.add_rows(ens, rows, row_sent[rows], scores[rows], tokens, history)
                if bool(ended.all()):
                    break
                alive = (~ended).nonzero().squeeze(1)
                ens.reorder(alive, encoder=True)
                row_sent, row_max, scores = row_sent[alive], row_max[alive], scores[alive]
                tokens, chosen = tokens[alive], chosen[alive]
                history = history[alive] if history is not None else None
            tokens = torch.cat([tokens, chosen.unsqueeze(1)], dim=1)
            prev = chosen
        return finisher.best(copies)


def _argmax(log_probs: torch.Tensor) -> torch.Tensor:
    return log_probs.argmax(-1)
