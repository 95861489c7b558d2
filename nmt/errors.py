"""The one error type for a user's mistake.

The CLI turns an `NMTError` into exit code 2 and one line on stderr; anything else is a bug and keeps
its traceback.
"""


class NMTError(Exception):
    """A problem with the user's input (files, configs, checkpoints), not with the code."""
