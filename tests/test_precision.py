"""nmt.precision: `auto` picks bf16 only where the CPU has native bf16 and torch may use it."""

from __future__ import annotations

import pytest
import torch

import nmt.precision as precision

CPU = torch.device("cpu")


@pytest.mark.parametrize("flags,capability,fast", [
    ({"avx2", "avx512f", "avx512_bf16"}, "AVX512", True),
    ({"avx2", "amx_bf16"}, "AVX512", True),
    ({"avx2", "avx512f"}, "AVX512", False),  # AVX-512 without its bf16 instructions
    ({"avx2"}, "AVX2", False),
    ({"avx2", "avx512f", "avx512_bf16"}, "AVX2", False),  # ATEN_CPU_CAPABILITY=avx2: an AVX2-only CPU emulated
])
def test_auto_is_bf16_only_with_native_bf16_that_torch_may_use(monkeypatch, flags: set[str], capability: str,
                                                                 fast: bool) -> None:
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert precision.cpu_has_fast_bf16() is fast
    assert precision.resolve_dtype("auto", CPU) == (torch.bfloat16 if fast else torch.float32)
    assert precision.resolve_dtype("fp32", CPU) == torch.float32
