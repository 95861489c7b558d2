"""Several models decoding in lockstep, as one: what every search steps through.

The next-token distribution is the renormalised mean of the models' log-probabilities (a product of experts);
with one model it is that model's distribution unchanged. Attention and coverage are averaged over the models
that have attention.

Rows and sentences. Each model keeps a decoder state per row (a hypothesis) and an encoder output either per row
(greedy search and sampling: rows leave one by one) or per sentence (beam search, after `expand(k)`: rows are
grouped k to a sentence, and the encoder states and attention keys are never copied per hypothesis).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from nmt.errors import NMTError
from nmt.model.decoder import DecoderState, StepWeights
from nmt.model.encoder import EncoderOutput
from nmt.model.seq2seq import OutputProjection, Seq2Seq
from nmt.shortlist import Shortlist
from nmt.tokens import BOS, EOS, PAD


@dataclass
class SearchStats:
    """What a search computed, for FLOP counts: decoder steps, hypothesis rows summed over the steps (one
    hypothesis token each), and the real source positions those rows attended to."""

    steps: int = 0
    rows: int = 0
    row_src_positions: int = 0


class Ensemble:
    """One model or several over the same rows; each keeps its own encoder output and decoder state."""

    def __init__(self, models: list[Seq2Seq], src: torch.Tensor, src_lengths: torch.Tensor, coverage: bool,
                 stats: SearchStats, shortlist: Shortlist | None = None, weights: list[StepWeights] | None = None):
        """`weights`: the models' recurrent weights already cast (`Ensemble.weights` of a running search that these
        sentences will join: a stream's joining would otherwise cast them again, 2-3% of a service's search time in
        py-spy's samples, AVX512-BF16 CPU)."""
        if not models:
            raise ValueError("an ensemble needs at least one model")
        vocabularies = {m.tgt_vocab for m in models}
        if len(vocabularies) != 1:
            raise NMTError(f"ensemble models have different target vocabulary sizes: {sorted(vocabularies)}")
        self.models = models
        self.stats = stats
        self._restrict_vocabulary(shortlist, src, src_lengths)
        self.has_attention = any(m.decoder.attention is not None for m in models)
        self.rows_per_sentence = 1
        self.device = src.device
        self._buffers: dict[str, torch.Tensor] = {}
        self.encs: list[EncoderOutput] = []
        self.keys: list[torch.Tensor | None] = []
        self.states: list[DecoderState] = []
        # Recurrent weights in the compute dtype, cast once per batch rather than at every step.
        self.weights: list[StepWeights] = weights or [m.decoder.step_weights(src.device) for m in models]
        for model in models:
            enc, keys = model.encode(src, src_lengths)
            state = model.decoder.init_state(enc)
            if coverage and model.decoder.attention is not None:
                state = replace(state, coverage=torch.zeros(enc.mask.shape, device=src.device))
            self.encs.append(enc)
            self.keys.append(keys)
            self.states.append(state)

    def _restrict_vocabulary(self, shortlist: Shortlist | None, src: torch.Tensor, src_lengths: torch.Tensor) -> None:
        """The columns the steps score: every target subword, or the union of the batch's shortlists, each
        sentence masked to its own (nmt/shortlist.py). Searches work on column indices: `to_tokens` maps them."""
        self.columns: torch.Tensor | None = None  # (columns,) target ids, None for the whole vocabulary
        self.column_mask: torch.Tensor | None = None  # (sentences or rows, columns) bool
        if shortlist is not None:
            columns, mask = shortlist.columns(src, src_lengths)
            self.columns, self.column_mask = columns.to(src.device), mask.to(src.device)
        self.vocab_size = self.models[0].tgt_vocab if self.columns is None else self.columns.numel()
        if self.columns is None:
            self.eos_column, self.banned_columns = EOS, (PAD, BOS)
        else:  # a shortlist always has EOS (load_shortlist checks); PAD and BOS are banned wherever they are
            self.eos_column = int((self.columns == EOS).nonzero()[0, 0])
            self.banned_columns = tuple(int(c) for c in torch.isin(self.columns, torch.tensor([PAD, BOS],
                                        device=self.columns.device)).nonzero().flatten())
        self.projections = [OutputProjection(m, self.columns) for m in self.models]

    def to_tokens(self, columns: torch.Tensor) -> torch.Tensor:
        return columns if self.columns is None else self.columns[columns]

    @property
    def src_mask(self) -> torch.Tensor:
        """(rows, src_len) with an encoder per row; (sentences, src_len) after `expand`."""
        return self.encs[0].mask

    def row_mask(self, rows: torch.Tensor) -> torch.Tensor:
        """(n, src_len): the source mask of rows `rows`, whichever way the encoder is held."""
        return self.src_mask.index_select(0, torch.div(rows, self.rows_per_sentence, rounding_mode="floor"))

    def _count(self, rows: int) -> None:
        self.stats.steps += 1
        self.stats.rows += rows
        self.stats.row_src_positions += int(self.src_mask.sum()) * self.rows_per_sentence

    def step(self, prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """prev: (rows,) -> log-probabilities (rows, vocab) float32, attention (rows, src_len) float32 or None.

        One model's log-softmax is torch's fused kernel: two reads of the logits and one write. Picking candidates
        from the raw logits and normalising with a log-sum-exp instead, as the issue proposed, measured slower
        in eager PyTorch (its log-sum-exp is five separate passes): beam 5 on the demo model, AVX2, fp32.
        """
        outputs, attn = self._step(prev)
        if len(outputs) == 1:
            return torch.log_softmax(outputs[0], dim=-1, out=self._buffer("log_probs", prev.numel())), attn
        return _product_of_experts(outputs), attn

    def _buffer(self, name: str, rows: int) -> torch.Tensor:
        """A (rows, vocab) float32 tensor reused from step to step (rows only shrink during a search):
        allocating and faulting in a fresh one of tens of MB at each step cost 1.4x in the projection and
        log-softmax (2,350 rows x 8,000 words, one AVX2 thread: 550 ms against 390). What a step returns stays
        valid until the next step."""
        buffer = self._buffers.get(name)
        if buffer is None or buffer.size(0) < rows or buffer.size(1) != self.vocab_size:
            buffer = self._buffers[name] = torch.empty(rows, self.vocab_size, device=self.device)
        return buffer[:rows]

    def _step(self, prev: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Every model's logits (rows, vocab) float32 for `prev` (rows,), their states moved on, and the mean
        attention (rows, src_len) of the models that have attention."""
        self._count(prev.numel())
        outputs, attentions = [], []
        for i, model in enumerate(self.models):
            logits, self.states[i], attn = model.step_logits(prev, self.states[i], self.encs[i], self.keys[i],
                                                             self.weights[i], self.projections[i],
                                                             self._buffer(f"logits{i}", prev.numel()))
            outputs.append(self._mask_columns(logits))
            if attn is not None:
                attentions.append(attn.float())
        return outputs, torch.stack(attentions).mean(0) if attentions else None

    def _mask_columns(self, logits: torch.Tensor) -> torch.Tensor:
        """Each row's logits (rows, columns) outside its own sentence's shortlist set to -inf, in place."""
        if self.column_mask is None:
            return logits
        sentences = self.column_mask.size(0)
        grouped = logits.view(sentences, logits.size(0) // sentences, -1)
        return grouped.masked_fill_(~self.column_mask.unsqueeze(1), float("-inf")).view_as(logits)

    def coverage(self) -> torch.Tensor | None:
        """(rows, src_len) summed attention so far, averaged over the models, or None."""
        covs = [s.coverage for s in self.states if s.coverage is not None]
        return torch.stack(covs).mean(0) if covs else None

    def expand(self, k: int) -> None:
        """k rows per sentence, each a copy of its sentence's state; the encoder stays one per sentence."""
        sentences = self.encs[0].states.size(0)
        self.states = [s.index_select(torch.arange(sentences, device=s.hidden.device).repeat_interleave(k))
                       for s in self.states]
        self.rows_per_sentence = k

    def keep_sentences(self, alive: torch.Tensor) -> None:
        """After `expand`: keep the encoder output of the sentences `alive` (their rows are reordered apart)."""
        self.encs = [e.index_select(alive) for e in self.encs]
        self.keys = [None if k is None else k.index_select(0, alive) for k in self.keys]
        if self.column_mask is not None:
            self.column_mask = self.column_mask.index_select(0, alive)

    def trim_source(self) -> None:
        """Cut the source dimension to the longest source still held: in a search that sentences join and leave
        (`nmt.stream`), the padding of one long sentence would otherwise cost attention work at every step after
        it has left. Padded positions are masked, so no result changes."""
        longest = int(self.src_mask.sum(1).max())
        if longest >= self.src_mask.size(1):
            return
        self.encs = [EncoderOutput(e.states[:, :longest].contiguous(), e.mask[:, :longest].contiguous(), e.final)
                     for e in self.encs]
        self.keys = [None if k is None else k[:, :longest].contiguous() for k in self.keys]
        self.states = [s if s.coverage is None else replace(s, coverage=s.coverage[:, :longest].contiguous())
                       for s in self.states]

    def absorb(self, other: Ensemble) -> None:
        """After `expand` on both: append `other`'s sentences (encoded apart, the same models) after this one's,
        the source dimension padded to the longer of the two (padded positions are masked, so a sentence's
        result does not change). How `nmt.stream` lets sentences join a search between its steps."""
        if self.column_mask is not None or other.column_mask is not None:
            raise ValueError("a search with a shortlist cannot take sentences in between its steps")
        if other.rows_per_sentence != self.rows_per_sentence:
            raise ValueError("both ensembles must hold as many rows per sentence")
        src_len = max(self.src_mask.size(1), other.src_mask.size(1))
        self.encs = [EncoderOutput(_cat_padded(a.states, b.states, src_len), _cat_padded(a.mask, b.mask, src_len),
                                   torch.cat([a.final, b.final])) for a, b in zip(self.encs, other.encs)]
        self.keys = [None if a is None else _cat_padded(a, b, src_len) for a, b in zip(self.keys, other.keys)]
        self.states = [DecoderState(torch.cat([a.hidden, b.hidden], 1),
                                    None if a.cell is None else torch.cat([a.cell, b.cell], 1),
                                    None if a.feed is None else torch.cat([a.feed, b.feed]),
                                    None if a.coverage is None else _cat_padded(a.coverage, b.coverage, src_len),
                                    None if a.context is None else torch.cat([a.context, b.context]))
                       for a, b in zip(self.states, other.states)]

    def reorder(self, rows: torch.Tensor, encoder: bool) -> None:
        """Keep (and repeat) the rows `rows`. With an encoder per row, `encoder=True` moves it along (rows move
        between sentences); within sentences, or with an encoder per sentence, only the states move."""
        self.states = [s.index_select(rows) for s in self.states]
        if encoder and self.rows_per_sentence == 1:
            self.encs = [e.index_select(rows) for e in self.encs]
            self.keys = [None if k is None else k.index_select(0, rows) for k in self.keys]
            if self.column_mask is not None:
                self.column_mask = self.column_mask.index_select(0, rows)


def _cat_padded(a: torch.Tensor, b: torch.Tensor, length: int) -> torch.Tensor:
    """a (n, ...) and b (m, ...) -> (n + m, length, ...), each padded with zeros (False) along dim 1."""
    pad = lambda t: t if t.size(1) == length else torch.cat(  # noqa: E731
        [t, t.new_zeros((t.size(0), length - t.size(1), *t.shape[2:]))], 1)
    return torch.cat([pad(a), pad(b)])


def _product_of_experts(logits: list[torch.Tensor]) -> torch.Tensor:
    """The renormalised mean of the models' log-probabilities: (rows, vocab) each -> (rows, vocab)."""
    return torch.log_softmax(torch.stack([torch.log_softmax(o, dim=-1) for o in logits]).mean(0), dim=-1)
