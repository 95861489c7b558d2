"""nmt: recurrent neural machine translation on PyTorch."""

__version__ = "0.1.0"

# Bumped whenever a checkpoint's layout changes in a way older code cannot read.
CHECKPOINT_FORMAT = 1
