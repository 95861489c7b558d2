"""One recurrent decoder for GRU and LSTM cells, with optional attention and input feeding (Luong et al., 2015).

Each step: the previous target embedding (concatenated with the previous attentional vector when input feeding)
goes through the RNN; the top layer's output attends over the encoder states; `tanh(W [h; context])` is the
attentional vector, which is both this step's output and the next step's fed input.

Without attention, the source reaches the decoder only as a summary: the encoder's final states (their mean with
`bridge: mean`). As in Cho et al. (2014), that summary is an input of every step, not only the first state's
source: a state that must both hold the source and track the output loses the early words of long sentences (a
GRU 512 reversing 3-12 symbols from its first state alone stalled at 94% exact match). Its share of layer 0's
input projection is computed once per batch and added at each step.

The recurrence is written out with `F.linear` on the weights of an `nn.GRU`/`nn.LSTM` (kept as the parameter
container, so checkpoints use torch's names and initialisation) instead of calling the module once per step.
That allows three things a per-step module call cannot do: the embedding half of the first layer's input
projection runs once for all steps as one large product; under autocast the weights are cast to the compute
dtype once per batch rather than once per step; and the gate arithmetic stays in fp32 while the products run
in bf16, so the recurrent state does not accumulate bf16 rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from nmt.model.attention import Attention
from nmt.model.encoder import EncoderOutput


@dataclass
class DecoderState:
    hidden: torch.Tensor  # (layers, batch, hidden)
    cell: torch.Tensor | None  # (layers, batch, hidden) for an LSTM
    feed: torch.Tensor | None  # (batch, output_size): previous attentional vector, for input feeding
    coverage: torch.Tensor | None = None  # (batch, src_len): summed attention, for the coverage penalty
    context: torch.Tensor | None = None  # (batch, gates * hidden): the source summary's input projection

    def index_select(self, index: torch.Tensor) -> "DecoderState":
        pick = lambda t, dim: None if t is None else t.index_select(dim, index)  # noqa: E731
        return DecoderState(pick(self.hidden, 1), pick(self.cell, 1), pick(self.feed, 0), pick(self.coverage, 0),
                            pick(self.context, 0))


@dataclass
class StepWeights:
    """The recurrent weights in the compute dtype, prepared once per batch (see the module docstring)."""

    # Each weight is a tensor, or an int8 layer (`nmt.quantize.Int8Linear`, its bias inside) after quantizing.
    emb_in: Any  # (gates * hidden, emb): layer 0's input weights for the embedding part
    feed_in: Any  # (gates * hidden, output_size): layer 0's input weights for the fed vector, or None
    bias_in: list[torch.Tensor]  # per layer (gates * hidden,)
    upper_in: list[Any]  # layers 1..: (gates * hidden, hidden)
    hidden_in: list[Any]  # per layer (gates * hidden, hidden)
    bias_hidden: list[torch.Tensor]


def _linear(x: torch.Tensor, weight: Any, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear`, or an int8 layer of `nmt.quantize` (which holds its own bias)."""
    return F.linear(x, weight, bias) if isinstance(weight, torch.Tensor) else weight(x)


def compute_dtype(device: torch.device) -> torch.dtype | None:
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return None


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
        emb_scale: float = 1.0,
    ):
        super().__init__()
        self.embedding = embedding
        self.emb_scale = emb_scale
        self.cell_type = cell
        self.hidden_size = hidden
        self.layers = layers
        self.attention = attention
        self.input_feeding = input_feeding and attention is not None
        self.context_input = attention is None  # the source summary at every step (module docstring)
        self.output_size = hidden
        rnn_input = (embedding.embedding_dim + (self.output_size if self.input_feeding else 0)
                     + (encoder_size if self.context_input else 0))
        rnn_class = nn.GRU if cell == "gru" else nn.LSTM
        # A parameter container: its forward is never called (see the module docstring).
        self.rnn = rnn_class(rnn_input, hidden, num_layers=layers, batch_first=True)
        self.layer_dropout = nn.Dropout(dropout)
        self.attentional = nn.Linear(hidden + encoder_size, hidden) if attention is not None else None
        self.bridge_kind = bridge
        self.bridge = nn.Linear(encoder_size, layers * hidden) if bridge != "zero" else None
        self.emb_dropout = nn.Dropout(emb_dropout)
        self.out_dropout = nn.Dropout(dropout)
        self.int8_weights: StepWeights | None = None  # set by nmt.quantize.quantize_decoder

    def summary(self, enc: EncoderOutput) -> torch.Tensor:
        """(batch, enc_size): the encoder's final states, or the mean of its states with `bridge: mean`."""
        if self.bridge_kind != "mean":
            return enc.final
        weights = enc.mask.to(enc.states.dtype).unsqueeze(-1)  # (batch, src_len, 1)
        return (enc.states * weights).sum(1) / weights.sum(1).clamp(min=1.0)

    def init_state(self, enc: EncoderOutput) -> DecoderState:
        batch = enc.states.size(0)
        summary = self.summary(enc) if self.bridge is not None or self.context_input else None
        if self.bridge is None:
            hidden = enc.states.new_zeros(self.layers, batch, self.hidden_size)
        else:
            hidden = torch.tanh(self.bridge(summary))  # (batch, layers * hidden)
            hidden = hidden.view(batch, self.layers, self.hidden_size).transpose(0, 1).contiguous()
        hidden = hidden.float()
        cell = hidden.clone() if self.cell_type == "lstm" else None
        feed = enc.states.new_zeros(batch, self.output_size) if self.input_feeding else None
        context = None
        if self.context_input:
            context = F.linear(summary, self.rnn.weight_ih_l0[:, self.embedding.embedding_dim:])
        return DecoderState(hidden, cell, feed, context=context)

    def step_weights(self, device: torch.device) -> StepWeights:
        if self.int8_weights is not None:
            return self.int8_weights
        dtype = compute_dtype(device)
        cast = (lambda t: t.to(dtype)) if dtype is not None else (lambda t: t)  # noqa: E731
        emb = self.embedding.embedding_dim
        w0 = self.rnn.weight_ih_l0
        return StepWeights(
            emb_in=cast(w0[:, :emb]),
            feed_in=cast(w0[:, emb:]) if self.input_feeding else None,
            bias_in=[getattr(self.rnn, f"bias_ih_l{k}") for k in range(self.layers)],
            upper_in=[cast(getattr(self.rnn, f"weight_ih_l{k}")) for k in range(1, self.layers)],
            hidden_in=[cast(getattr(self.rnn, f"weight_hh_l{k}")) for k in range(self.layers)],
            bias_hidden=[getattr(self.rnn, f"bias_hh_l{k}") for k in range(self.layers)],
        )

    def int8_step_weights(self) -> StepWeights:
        """The recurrent weights in int8 (`nmt.quantize`): the embeddings' share of layer 0's input with a per-row
        range, the other inputs (hidden states, the fed attentional vector) within [-1, 1]; biases inside."""
        from nmt.quantize import Int8Linear

        emb = self.embedding.embedding_dim
        w0 = self.rnn.weight_ih_l0
        rnn = lambda name, k: getattr(self.rnn, f"{name}_l{k}")  # noqa: E731
        return StepWeights(
            emb_in=Int8Linear(w0[:, :emb], rnn("bias_ih", 0), None),
            feed_in=Int8Linear(w0[:, emb:], None, 1.0) if self.input_feeding else None,
            bias_in=[rnn("bias_ih", k) for k in range(self.layers)],
            upper_in=[Int8Linear(rnn("weight_ih", k), rnn("bias_ih", k), 1.0) for k in range(1, self.layers)],
            hidden_in=[Int8Linear(rnn("weight_hh", k), rnn("bias_hh", k), 1.0) for k in range(self.layers)],
            bias_hidden=[rnn("bias_hh", k) for k in range(self.layers)],
        )

    def embed(self, tokens: torch.Tensor, weights: StepWeights) -> torch.Tensor:
        """(...) token ids -> (..., gates * hidden): layer 0's input projection of their embeddings.

        For teacher forcing this runs once over (batch, tgt_len): one embedding lookup (and one embedding
        backward, instead of a dense vocabulary-sized gradient per step) and one large product.
        """
        embedded = self.emb_dropout(self.embedding(tokens) * self.emb_scale)
        return _linear(embedded, weights.emb_in, weights.bias_in[0])

    def _cell(self, gates_in: torch.Tensor, gates_hidden: torch.Tensor, hidden: torch.Tensor,
              cell: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The GRU/LSTM update of torch.nn.GRU/LSTM, in fp32. gates_*: (batch, gates * hidden)."""
        gates_in, gates_hidden = gates_in.float(), gates_hidden.float()
        if self.cell_type == "gru":
            in_r, in_z, in_n = gates_in.chunk(3, dim=-1)
            hid_r, hid_z, hid_n = gates_hidden.chunk(3, dim=-1)
            reset = torch.sigmoid(in_r + hid_r)
            update = torch.sigmoid(in_z + hid_z)
            candidate = torch.tanh(in_n + reset * hid_n)
            return candidate + update * (hidden - candidate), None
        i, f, g, o = (gates_in + gates_hidden).chunk(4, dim=-1)
        cell = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(cell), cell

    def step_from_input(
        self, gates_in: torch.Tensor, state: DecoderState, enc: EncoderOutput, keys: torch.Tensor | None,
        weights: StepWeights,
    ) -> tuple[torch.Tensor, DecoderState, torch.Tensor | None]:
        """One step given layer 0's projected input (batch, gates * hidden) from `embed`."""
        if self.input_feeding:
            gates_in = gates_in + _linear(state.feed, weights.feed_in)
        if state.context is not None:
            gates_in = gates_in + state.context
        hiddens, cells = [], []
        x = None
        for k in range(self.layers):
            if k > 0:
                gates_in = _linear(self.layer_dropout(x), weights.upper_in[k - 1], weights.bias_in[k])
            gates_hidden = _linear(state.hidden[k], weights.hidden_in[k], weights.bias_hidden[k])
            x, c = self._cell(gates_in, gates_hidden, state.hidden[k], state.cell[k] if state.cell is not None
                              else None)
            hiddens.append(x)
            cells.append(c)
        top = x  # (rows, hidden) fp32
        attn_weights = None
        if self.attention is not None:
            context, attn_weights = self._attend(top, enc, keys)
            top = torch.tanh(self.attentional(torch.cat([top, context.to(top.dtype)], dim=-1)))
        output = self.out_dropout(top)
        coverage = state.coverage
        if coverage is not None and attn_weights is not None:
            coverage = coverage + attn_weights
        new_state = DecoderState(
            torch.stack(hiddens), torch.stack(cells) if self.cell_type == "lstm" else None,
            output if self.input_feeding else None, coverage, state.context)
        return output, new_state, attn_weights

    def _attend(self, top: torch.Tensor, enc: EncoderOutput, keys: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """top (rows, hidden) -> context (rows, enc_size), weights (rows, src_len). The encoder output holds one
        entry per row, or one per sentence with the rows grouped by sentence (beam search: rows = sentences *
        beam, see nmt/model/attention.py)."""
        rows, sentences = top.size(0), enc.states.size(0)
        if rows == sentences:
            return self.attention(top, enc.states, keys, enc.mask)
        context, weights = self.attention(top.view(sentences, rows // sentences, -1), enc.states, keys, enc.mask)
        return context.reshape(rows, -1), weights.reshape(rows, -1)

    def step(
        self, prev: torch.Tensor, state: DecoderState, enc: EncoderOutput, keys: torch.Tensor | None,
        weights: StepWeights | None = None,
    ) -> tuple[torch.Tensor, DecoderState, torch.Tensor | None]:
        """prev: (batch,) previous tokens -> output (batch, output_size), new state, attention (batch, src_len).

        Pass `weights` (from `step_weights`) when calling step after step, to prepare them only once.
        """
        if weights is None:
            weights = self.step_weights(prev.device)
        return self.step_from_input(self.embed(prev, weights), state, enc, keys, weights)
