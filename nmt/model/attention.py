"""Attention: one interface for additive (Bahdanau) and multiplicative (Luong dot/general) scoring.

Keys are projected once per batch (`prepare`), not once per decoder step: that projection is the costly part
of additive attention, and it does not depend on the step.
"""

from __future__ import annotations

import torch
from torch import nn


class Attention(nn.Module):
    """Scores a query against encoder states. `prepare` once per batch, then `forward` each step."""

    def prepare(self, keys: torch.Tensor) -> torch.Tensor:
        """keys: (batch, src_len, key_size) -> projected keys used by `forward`."""
        raise NotImplementedError

    def scores(self, query: torch.Tensor, projected: torch.Tensor) -> torch.Tensor:
        """query: (batch, query_size) -> (batch, src_len) unnormalised scores."""
        raise NotImplementedError

    def forward(self, query: torch.Tensor, keys: torch.Tensor, projected: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the context (batch, key_size) and the weights (batch, src_len)."""
        scores = self.scores(query, projected).masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores.float(), dim=-1).to(keys.dtype)
        context = torch.bmm(weights.unsqueeze(1), keys).squeeze(1)
        return context, weights


class AdditiveAttention(Attention):
    """Bahdanau et al. (2015): v^T tanh(W_k k + W_q q)."""

    def __init__(self, query_size: int, key_size: int, attention_dim: int):
        super().__init__()
        self.key_proj = nn.Linear(key_size, attention_dim, bias=False)
        self.query_proj = nn.Linear(query_size, attention_dim, bias=False)
        self.v = nn.Linear(attention_dim, 1, bias=False)

    def prepare(self, keys: torch.Tensor) -> torch.Tensor:
        return self.key_proj(keys)  # (batch, src_len, attention_dim)

    def scores(self, query: torch.Tensor, projected: torch.Tensor) -> torch.Tensor:
        hidden = torch.tanh(projected + self.query_proj(query).unsqueeze(1))
        return self.v(hidden).squeeze(-1)


class MultiplicativeAttention(Attention):
    """Luong et al. (2015): q^T k (dot) or q^T W k (general).

    With `general`, W k is computed once per batch. With `dot` the key and query sizes must agree; when they do
    not, the keys are projected to the query size (which makes it `general` in all but name).
    """

    def __init__(self, query_size: int, key_size: int, general: bool):
        super().__init__()
        needs_proj = general or query_size != key_size
        self.key_proj = nn.Linear(key_size, query_size, bias=False) if needs_proj else None

    def prepare(self, keys: torch.Tensor) -> torch.Tensor:
        return self.key_proj(keys) if self.key_proj is not None else keys  # (batch, src_len, query_size)

    def scores(self, query: torch.Tensor, projected: torch.Tensor) -> torch.Tensor:
        return torch.bmm(projected, query.unsqueeze(-1)).squeeze(-1)


def build_attention(kind: str, query_size: int, key_size: int, attention_dim: int) -> Attention | None:
    if kind == "none":
        return None
    if kind == "bahdanau":
        return AdditiveAttention(query_size, key_size, attention_dim)
    return MultiplicativeAttention(query_size, key_size, general=(kind == "general"))
