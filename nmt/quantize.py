"""int8 decoding on CPUs: the decoder's linear layers and the vocabulary projection in int8 (fbgemm/oneDNN).

Weights are quantized once, per output channel, symmetric. Activations are quantized at every call, and here is
the one design choice: torch's dynamic quantization picks one activation scale for the whole batch (its min and
max), so a sentence would translate differently alone and in a batch. Every activation range is therefore fixed
per layer instead, independent of the batch:

- the inputs that are bounded by construction (a GRU's or an LSTM's hidden state, the attentional vector and the
  fed one are tanh or sigmoid-times-tanh values, the attention context is a weighted mean of LSTM outputs) are
  quantized over [-1, 1];
- the others (embeddings, the vocabulary projection's input behind a tied model's down-projection) are scaled
  row by row to [-1, 1] first and the outputs scaled back, a per-row scale.

fbgemm's dynamic op computes its range from the tensor's own minimum and maximum, so each call appends the two
rows (+bound, -bound) to its input and drops their outputs: with every real row clamped inside, the range is
exactly [-bound, bound] whatever the batch, and integer accumulation makes each row's result independent of the
others. The encoder, the attention scores and the step's element-wise work stay in fp32.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from nmt.errors import NMTError


class Int8Linear:
    """`x W^T + b` with W in int8, for x of shape (rows, in_features): `bound` is the fixed range of x, or None
    for a per-row range."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, bound: float | None):
        weight = weight.detach().float()
        scales = (weight.abs().amax(dim=1) / 127.0).clamp(min=1e-12).double()
        zeros = torch.zeros(weight.size(0), dtype=torch.long)
        with warnings.catch_warnings():  # torch deprecates quantized tensors in favour of torchao, not installed
            warnings.simplefilter("ignore")
            qweight = torch.quantize_per_channel(weight, scales, zeros, 0, torch.qint8)
        self.bias = None if bias is None else bias.detach().float()
        self.bound = bound
        packed_bias = self.bias if bound is not None else None  # per-row scaling adds the bias after
        self.packed = torch.ops.quantized.linear_prepack(qweight, packed_bias)
        ends = 1.0 if bound is None else bound
        self.ends = torch.tensor([ends, -ends]).unsqueeze(1).expand(2, weight.size(1)).contiguous()
        self.out_features = weight.size(0)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1]).float()
        if self.bound is None:
            scale = x.abs().amax(dim=1, keepdim=True).clamp(min=1e-12)  # (rows, 1)
            y = self._matmul(x / scale).mul_(scale)
            if self.bias is not None:
                y.add_(self.bias)
        else:
            y = self._matmul(x.clamp(-self.bound, self.bound))
        return y.view(*shape[:-1], self.out_features)

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(torch.cat([x, self.ends]), self.packed, True)[:-2]


class Int8Module(nn.Module):
    """An `nn.Linear` replaced by its `Int8Linear` (inference only; it has no parameters to train)."""

    def __init__(self, linear: nn.Linear, bound: float | None):
        super().__init__()
        self.int8 = Int8Linear(linear.weight, linear.bias, bound)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bound = bound
        self._float = (linear.weight, linear.bias)  # not registered: for `subset` only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.int8(x)

    def subset(self, rows: torch.Tensor) -> Int8Linear:
        """The layer for the output features `rows` only (a shortlist's columns), quantized afresh."""
        weight, bias = self._float
        return Int8Linear(weight.index_select(0, rows), None if bias is None else bias.index_select(0, rows),
                          self.bound)


def check_int8_engine() -> None:
    if "fbgemm" not in torch.backends.quantized.supported_engines and \
            "onednn" not in torch.backends.quantized.supported_engines:
        raise NMTError("dtype int8 needs torch's fbgemm or oneDNN quantized kernels, which this build lacks")


def quantize_decoder(model: nn.Module) -> None:
    """Put `model`'s (a `Seq2Seq` in eval mode) decoder step and vocabulary projection in int8, in place; a
    second call does nothing. The model can then only translate, on the CPU."""
    if getattr(model, "int8", False):
        return
    check_int8_engine()
    decoder = model.decoder
    decoder.int8_weights = decoder.int8_step_weights()
    if decoder.attentional is not None:
        decoder.attentional = Int8Module(decoder.attentional, 1.0)  # [top state; context], both in [-1, 1]
    if decoder.attention is not None and hasattr(decoder.attention, "query_proj"):
        decoder.attention.query_proj = Int8Module(decoder.attention.query_proj, 1.0)  # the top state
    if model.pre_output is not None:
        model.pre_output = Int8Module(model.pre_output, 1.0)  # the decoder's output, in [-1, 1]
    # Behind a down-projection the projection's input is unbounded: a per-row range.
    model.output = Int8Module(model.output, 1.0 if model.pre_output is None else None)
    model.int8 = True
