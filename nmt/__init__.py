"""nmt: recurrent neural machine translation on PyTorch."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# Bumped whenever a checkpoint's layout changes in a way older code cannot read.
CHECKPOINT_FORMAT = 1


def __getattr__(name: str) -> Any:
    """`nmt.load` imports torch only when first used, so that `import nmt` (and `nmt prepare`) stays cheap."""
    if name == "load":
        from nmt.hub import load

        return load
    raise AttributeError(f"module 'nmt' has no attribute {name!r}")
