"""One recurrent decoder for GRU and LSTM cells, with optional attention and input feeding (Luong et al., 2015).

Each step: the previous target embedding (concatenated with the previous attentional vector when input feeding)
goes through the RNN; the top layer's output attends over the encoder states; `tanh(W [h; context])` is the
attentional vector, which is both this step's output and the next step's fed input.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from nmt.model.attention import Attention
from nmt.model.encoder import EncoderOutput


@dataclass
class DecoderState:
    hidden: torch.Tensor  # (layers, batch, hidden)
    cell: torch.Tensor | None  # (layers, batch, hidden) for an LSTM
    feed: torch.Tensor | None  # (batch, output_size): previous attentional vector, for input feeding
    coverage: torch.Tensor | None = None  # (batch, src_len): summed attention, for the coverage penalty

    def index_select(self, index: torch.Tensor) -> "DecoderState":
        pick = lambda t, dim: None if t is None else t.index_select(dim, index)  # noqa: E731
        return DecoderState(pick(self.hidden, 1), pick(self.cell, 1), pick(self.feed, 0), pick(self.coverage, 0))


class Decoder(nn.Module):
    def __init__(
        self,
        embedding: nn.Embedding,
        cell: str,
        hidden: int,
        layers: int,
        encoder_size: int,
        attention: Attention | None,
        input_feeding: bool,
        bridge: str,
        dropout: float,
        emb_dropout: float,
    ):
        super().__init__()
        self.embedding = embedding
        self.cell_type = cell
        self.hidden_size = hidden
        self.layers = layers
        self.attention = attention
        self.input_feeding = input_feeding and attention is not None
        self.output_size = hidden
        rnn_input = embedding.embedding_dim + (self.output_size if self.input_feeding else 0)
        rnn_class = nn.GRU if cell == "gru" else nn.LSTM
        self.rnn = rnn_class(rnn_input, hidden, num_layers=layers, batch_first=True,
                             dropout=dropout if layers > 1 else 0.0)
        self.attentional = nn.Linear(hidden + encoder_size, hidden) if attention is not None else None
        self.bridge_kind = bridge
        self.bridge = nn.Linear(encoder_size, layers * hidden) if bridge != "zero" else None
        self.emb_dropout = nn.Dropout(emb_dropout)
        self.out_dropout = nn.Dropout(dropout)

    def init_state(self, enc: EncoderOutput) -> DecoderState:
        batch = enc.states.size(0)
        if self.bridge is None:
            hidden = enc.states.new_zeros(self.layers, batch, self.hidden_size)
        else:
            if self.bridge_kind == "final":
                summary = enc.final  # (batch, enc_size)
            else:
                weights = enc.mask.to(enc.states.dtype).unsqueeze(-1)  # (batch, src_len, 1)
                summary = (enc.states * weights).sum(1) / weights.sum(1).clamp(min=1.0)
            hidden = torch.tanh(self.bridge(summary))  # (batch, layers * hidden)
            hidden = hidden.view(batch, self.layers, self.hidden_size).transpose(0, 1).contiguous()
        cell = hidden.clone() if self.cell_type == "lstm" else None
        feed = enc.states.new_zeros(batch, self.output_size) if self.input_feeding else None
        return DecoderState(hidden, cell, feed)

    def step(
        self, prev: torch.Tensor, state: DecoderState, enc: EncoderOutput, keys: torch.Tensor | None
    ) -> tuple[torch.Tensor, DecoderState, torch.Tensor | None]:
        """prev: (batch,) previous tokens -> output (batch, output_size), new state, attention (batch, src_len)."""
        x = self.emb_dropout(self.embedding(prev))  # (batch, emb)
        if self.input_feeding:
            x = torch.cat([x, state.feed], dim=-1)
        if self.cell_type == "lstm":
            out, (hidden, cell) = self.rnn(x.unsqueeze(1), (state.hidden, state.cell))
        else:
            out, hidden = self.rnn(x.unsqueeze(1), state.hidden)
            cell = None
        top = out[:, 0]  # (batch, hidden)
        weights = None
        if self.attention is not None:
            context, weights = self.attention(top, enc.states, keys, enc.mask)
            top = torch.tanh(self.attentional(torch.cat([top, context], dim=-1)))
        output = self.out_dropout(top)
        coverage = state.coverage
        if coverage is not None and weights is not None:
            coverage = coverage + weights
        return output, DecoderState(hidden, cell, output if self.input_feeding else None, coverage), weights
