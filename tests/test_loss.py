"""The hand-written loss against the same loss written with autograd, in fp32 and under bf16 logits."""

from __future__ import annotations

import pytest
import torch

from nmt.tokens import PAD
from nmt.loss import sequence_loss


def autograd_loss(logits: torch.Tensor, target: torch.Tensor, smoothing: float) -> tuple[torch.Tensor,
                                                                                        torch.Tensor]:
    """The textbook formulation: every term through autograd."""
    log_probs = torch.log_softmax(logits.reshape(-1, logits.size(-1)).float(), dim=-1)
    flat = target.reshape(-1)
    real = flat != PAD
    nll = -log_probs.gather(1, flat.unsqueeze(1)).squeeze(1).masked_fill(~real, 0.0).sum()
    uniform = -log_probs.mean(dim=-1).masked_fill(~real, 0.0).sum()
    return (1.0 - smoothing) * nll + smoothing * uniform, nll.detach()


def batch(seed: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(4, 7, 50, generator=gen)).to(dtype)
    target = torch.randint(1, 50, (4, 7), generator=gen)
    target[1, 4:] = PAD
    target[3, 2:] = PAD
    return logits, target


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loss_and_gradient_equal_the_autograd_formulation(smoothing: float, seed: int) -> None:
    logits, target = batch(seed)
    mine = logits.clone().requires_grad_()
    loss, nll = sequence_loss(mine, target, smoothing)
    (2.5 * loss).backward()
    reference = logits.clone().requires_grad_()
    ref_loss, ref_nll = autograd_loss(reference, target, smoothing)
    (2.5 * ref_loss).backward()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(nll, ref_nll, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(mine.grad, reference.grad, rtol=1e-5, atol=1e-7)
    assert not nll.requires_grad
    assert mine.grad[target == PAD].abs().max() == 0  # padding positions get no gradient


def test_bf16_logits_get_a_bf16_gradient_close_to_fp32() -> None:
    logits, target = batch(3)
    low = logits.to(torch.bfloat16).requires_grad_()
    loss, _ = sequence_loss(low, target, 0.1)
    loss.backward()
    reference = logits.to(torch.bfloat16).float().requires_grad_()
    autograd_loss(reference, target, 0.1)[0].backward()
    assert low.grad.dtype == torch.bfloat16
    torch.testing.assert_close(low.grad.float(), reference.grad, rtol=1e-2, atol=1e-3)


def test_all_padding_gives_zero_loss() -> None:
    logits = torch.randn(2, 3, 10, requires_grad=True)
    target = torch.full((2, 3), PAD)
    loss, nll = sequence_loss(logits, target, 0.1)
    loss.backward()
    assert loss.item() == 0.0 and nll.item() == 0.0
    assert logits.grad.abs().max() == 0
