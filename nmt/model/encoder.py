"""The bidirectional LSTM encoder, run over packed sequences so that padding never reaches a state."""

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
        with _fp32_lstm_without_native_bf16(embedded.device):
            packed = pack_padded_sequence(embedded, lengths.cpu(), batch_first=True, enforce_sorted=False)
            out, (h, _) = self.rnn(packed)
        states, _ = pad_packed_sequence(out, batch_first=True, total_length=src.size(1))
        # h: (layers * 2, batch, hidden); the last two rows are the top layer's two directions.
        final = torch.cat([h[-2], h[-1]], dim=-1)  # (batch, 2 * hidden)
        mask = torch.arange(src.size(1), device=src.device)[None, :] < lengths.to(src.device)[:, None]
        return EncoderOutput(self.out_dropout(states), mask, final)
