"""The bidirectional LSTM encoder. Padding never reaches a real position's state: training runs over packed
sequences; decoding on a CPU runs each direction over the padded batch, the backward one over every sentence
reversed in place (`_directions_apart`), so that a sentence's states are the same alone or in any batch."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from nmt.precision import cpu_has_fast_bf16


@dataclass
class EncoderOutput:
    states: torch.Tensor  # (batch, src_len, 2 * hidden): top layer, both directions
    mask: torch.Tensor  # (batch, src_len) bool, True on real tokens
    final: torch.Tensor  # (batch, 2 * hidden): top layer's last forward and first backward state

    def index_select(self, index: torch.Tensor) -> "EncoderOutput":
        return EncoderOutput(self.states.index_select(0, index), self.mask.index_select(0, index),
                             self.final.index_select(0, index))


def _fp32_lstm_without_native_bf16(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on a CPU without native bf16 (AVX2 only): oneDNN has no bf16 LSTM for a single sequence
    there ("could not create a primitive descriptor"), so the LSTM runs in fp32; bf16 is the slow choice on such a
    CPU anyway (`nmt.precision`)."""
    if device.type == "cpu" and torch.is_autocast_enabled("cpu") and \
            torch.get_autocast_dtype("cpu") == torch.bfloat16 and not cpu_has_fast_bf16():
        return torch.autocast("cpu", enabled=False)
    return contextlib.nullcontext()


class Encoder(nn.Module):
    def __init__(self, embedding: nn.Embedding, hidden: int, layers: int, dropout: float, emb_dropout: float,
                 emb_scale: float = 1.0):
        super().__init__()
        self.embedding = embedding
        self.emb_scale = emb_scale
        self.emb_dropout = nn.Dropout(emb_dropout)
        self.rnn = nn.LSTM(embedding.embedding_dim, hidden, num_layers=layers, batch_first=True,
                           bidirectional=True, dropout=dropout if layers > 1 else 0.0)
        self.out_dropout = nn.Dropout(dropout)
        self.output_size = 2 * hidden

    def forward(self, src: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        """src: (batch, src_len) ids; lengths: (batch,) on the CPU."""
        embedded = self.emb_dropout(self.embedding(src) * self.emb_scale)  # (batch, src_len, emb)
        mask = torch.arange(src.size(1), device=src.device)[None, :] < lengths.to(src.device)[:, None]
        with _fp32_lstm_without_native_bf16(embedded.device):
            if self.training or embedded.device.type != "cpu":
                states, final = self._packed(embedded, lengths)
            else:
                states, final = _directions_apart(self.rnn, embedded, lengths.to(src.device))
        return EncoderOutput(self.out_dropout(states), mask, final)

    def _packed(self, embedded: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both directions at once over packed sequences: torch's step-by-step LSTM on a CPU (hundreds of small
        operations), cuDNN's on a GPU. States (batch, src_len, 2 * hidden), zero on padding; final (batch, 2 *
        hidden)."""
        packed = pack_padded_sequence(embedded, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, (h, _) = self.rnn(packed)
        states, _ = pad_packed_sequence(out, batch_first=True, total_length=embedded.size(1))
        # h: (layers * 2, batch, hidden); the last two rows are the top layer's two directions.
        return states, torch.cat([h[-2], h[-1]], dim=-1)


# Sentences per oneDNN LSTM call when decoding on a CPU: every call has this many rows, the last one filled up with
# one-token rows, since oneDNN's results for a row depend on the number of rows in its call (by up to a bf16
# rounding step), and on nothing else in it: not its neighbours, its place or the padding after it. At 4 a call
# costs about what 2 cost. Against torch's packed LSTM (`tools/encoder_speed.py`, demo model, one thread,
# AVX512-BF16 AMD EPYC, bf16): 1.12 ms against 0.75 for one sentence, 1.24-1.27 against 3.04-3.34 for two to
# four, 21.9 against 14.3 for 64 (0.34 ms a sentence against 0.22); in fp32 1.63 / 0.96, 1.71 / 3.32, 32.7 / 28.7.
ONEDNN_ROWS = 4


def _directions_apart(rnn: nn.LSTM, embedded: torch.Tensor,
                      lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`rnn` (bidirectional, batch first) over a padded batch, `ONEDNN_ROWS` sentences at a time, one direction at
    a time, each a single oneDNN LSTM call. The same states as `Encoder._packed` up to rounding, and what
    decoding needs from an encoder:

    - A sentence's states do not depend on its batch. torch runs a packed batch step by step, but hands a batch
      whose sentences all have one length (a lone sentence, say) to oneDNN: with bf16 autocast the two differ
      by 1e-2, so a sentence translated alone came out differently from the same sentence in a file (17 of 300
      test2016 sentences on the demo model, AVX512-BF16 CPU), and a service's answer from `nmt translate`'s.
    - It is faster for two to four sentences, what a service's searches mostly encode as sentences join them
      (2.4-2.7x in bf16, AVX512-BF16 CPU: `ONEDNN_ROWS`), and slower for one alone and for a file's large
      batches, where the encoder is a small part of decoding: `nmt translate` ran 1.5% slower (docs/BENCHMARKS.md).

    Returns states (batch, src_len, 2 * hidden), zero on padding, and final (batch, 2 * hidden): the top layer's
    forward state at each sentence's last token and its backward state at the first."""
    batch, src_len, _ = embedded.shape
    states = embedded.new_zeros(batch, src_len, 2 * rnn.hidden_size)
    final = embedded.new_zeros(batch, 2 * rnn.hidden_size)
    for start in range(0, batch, ONEDNN_ROWS):
        rows = slice(start, min(start + ONEDNN_ROWS, batch))
        chunk_lengths = lengths[rows]
        longest = int(chunk_lengths.max())
        chunk, filler = embedded[rows, :longest], ONEDNN_ROWS - (rows.stop - rows.start)
        if filler:
            chunk = torch.cat([chunk, chunk.new_zeros(filler, longest, chunk.size(2))])
            chunk_lengths = torch.cat([chunk_lengths, chunk_lengths.new_ones(filler)])
        chunk_states, chunk_final = _both_directions(rnn, chunk, chunk_lengths)
        states[rows, :longest] = chunk_states[: rows.stop - rows.start]
        final[rows] = chunk_final[: rows.stop - rows.start]
    return states, final


def _both_directions(rnn: nn.LSTM, embedded: torch.Tensor,
                     lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One call per layer and direction: the forward one over the padded rows as they are (padding comes after a
    sentence's last token, so it never reaches a real state), the backward one over each sentence reversed in
    place (padding still last). embedded: (rows, src_len, emb); lengths: (rows,). Returns states (rows, src_len,
    2 * hidden), zero on padding, and final (rows, 2 * hidden)."""
    rows, src_len, _ = embedded.shape
    positions = torch.arange(src_len, device=embedded.device)[None, :]  # (1, src_len)
    real = positions < lengths[:, None]  # (rows, src_len)
    reverse = torch.where(real, lengths[:, None] - 1 - positions, positions)  # its own inverse
    zeros = embedded.new_zeros(1, rows, rnn.hidden_size)
    layer_input = embedded
    for layer in range(rnn.num_layers):
        directions = []
        for suffix in ("", "_reverse"):
            weights = [getattr(rnn, f"{name}_l{layer}{suffix}") for name in ("weight_ih", "weight_hh", "bias_ih",
                                                                             "bias_hh")]
            inputs = _reorder(layer_input, reverse) if suffix else layer_input
            out = torch.lstm(inputs, (zeros, zeros), weights, True, 1, 0.0, False, False, True)[0]
            directions.append(_reorder(out, reverse) if suffix else out)
        layer_input = torch.cat(directions, dim=-1).to(embedded.dtype)  # (rows, src_len, 2 * hidden)
    states = layer_input * real[:, :, None]
    hidden = rnn.hidden_size
    final = torch.cat([states[torch.arange(rows), lengths - 1, :hidden], states[:, 0, hidden:]], dim=-1)
    return states, final


def _reorder(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x (rows, src_len, features) with each row's positions in the order of `positions` (rows, src_len)."""
    return x.gather(1, positions[:, :, None].expand(-1, -1, x.size(2)))
