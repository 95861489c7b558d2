"""Writing a command's output files so that no mistake of the user's destroys data.

Three rules, each from a file a user lost:
- An output is never one of the command's inputs. Files are compared by what they are (device and inode), not
  by their names, so a symlink, a hard link, `./name` or the file behind stdin are all caught.
- A regular output is written to a temporary file beside it and renamed over it only when the command
  succeeds: a command that fails or is interrupted leaves the path as it was.
- An existing output that is not a regular file is never replaced: a character device or a pipe (`/dev/null`,
  `/dev/stdout`, a FIFO) is written in place, a directory or anything else is refused.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Union

from nmt.errors import NMTError

@dataclass(frozen=True)
class Stream:
    """Standard input or output, as the file behind it: `nmt translate -o f.de < f.de` reads what it writes."""

    name: str
    fd: int | None  # None for a stream with no file behind it (in memory)


def standard_input() -> Stream:
    return Stream("standard input", _fileno(sys.stdin))


def standard_output() -> Stream:
    return Stream("standard output", _fileno(sys.stdout))


def _fileno(stream: IO) -> int | None:
    try:
        return stream.fileno()
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return None


# An input or output: a path, or a standard stream.
Input = Union[str, "os.PathLike[str]", Stream]


def _stat(item: Input) -> os.stat_result | None:
    try:
        if isinstance(item, Stream):
            return os.fstat(item.fd) if item.fd is not None else None
        return os.stat(item)
    except OSError:
        return None


def _describe(item: Input) -> str:
    return item.name if isinstance(item, Stream) else str(item)


def same_file(a: Input, b: Input) -> bool:
    """Whether `a` and `b` are the same existing file (device and inode)."""
    sa, sb = _stat(a), _stat(b)
    return sa is not None and sb is not None and (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _is_data_file(item: Input) -> bool:
    """Only a regular file holds data that writing could destroy: a terminal or /dev/null shared by stdin
    and stdout is not aliasing."""
    st = _stat(item)
    return st is not None and stat.S_ISREG(st.st_mode)


def check_outputs(outputs: Iterable[Input | None], inputs: Iterable[Input | None]) -> None:
    """Refuse (as a user error) any output that is one of the inputs or another output.

    Outputs that do not exist yet are compared by their resolved paths, so that two options naming the same
    new file are caught too.
    """
    outs = [o for o in outputs if o is not None]
    ins = [i for i in inputs if i is not None]
    for out in outs:
        for item in ins:
            if _is_data_file(out) and same_file(out, item):
                raise NMTError(f"{_describe(out)} is also an input ({_describe(item)}); writing it would destroy "
                               "the input: choose another output")
    for k, a in enumerate(outs):
        for b in outs[k + 1:]:
            both_paths = not isinstance(a, Stream) and not isinstance(b, Stream)
            if (_is_data_file(a) and same_file(a, b)) or (both_paths and Path(a).resolve() == Path(b).resolve()
                                                          and not Path(a).exists()):
                raise NMTError(f"{_describe(a)} and {_describe(b)} are the same file; each output needs its own")


def check_writable(path: str | os.PathLike) -> None:
    """Refuse an output path that cannot be written, before any work is done."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if not path.parent.is_dir():
            raise NMTError(f"cannot write {path}: folder {path.parent} does not exist") from None
        return
    except OSError as err:
        raise NMTError(f"cannot write {path}: {err.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise NMTError(f"cannot write {path}: it is a directory; name a file")
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
        raise NMTError(f"cannot write {path}: it exists and is not a regular file, a device or a pipe")


class WriteError(NMTError):
    """A failed write (a full disk, a lost mount): `cannot write PATH: reason`."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"cannot write {path}: {reason}")
        self.path, self.reason = str(path), reason


class StdoutError(WriteError):
    """Standard output cannot be written (a full disk behind a redirection)."""


def write_error(path: str | os.PathLike, err: OSError) -> WriteError:
    reason = (err.strerror or os.strerror(err.errno)) if err.errno else str(err)
    return WriteError(path, reason)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, binary: bool = False) -> Iterator[IO]:
    """Open `path` for writing; on success it holds the complete new content, on any failure (an exception,
    Ctrl-C) it is untouched.

    A regular file (or a new one) is written to `.NAME.tmpPID` beside it, fsynced and renamed over it; through
    a symlink, the file it points to is the one replaced (as `>` would write it), with its permissions kept. A
    character device or a pipe is written in place: there is nothing to keep, and a rename would replace the
    device node. Write errors become `NMTError("cannot write PATH: reason")`.
    """
    path = Path(path)
    check_writable(path)
    st = _stat(path)
    in_place = st is not None and not stat.S_ISREG(st.st_mode)
    real = Path(os.path.realpath(path)) if st is not None else path
    target = path if in_place else real.with_name(f".{real.name}.tmp{os.getpid()}")
    try:
        handle = open(target, "wb") if binary else open(target, "w", encoding="utf-8", newline="\n")
        if st is not None and not in_place:
            os.chmod(target, stat.S_IMODE(st.st_mode))
    except OSError as err:
        raise write_error(path, err) from None
    try:
        with handle:
            yield handle
            handle.flush()
            if not in_place:
                os.fsync(handle.fileno())
        if not in_place:
            os.replace(target, real)
            _fsync_folder(real.parent)
    except OSError as err:
        if not in_place:
            target.unlink(missing_ok=True)
        raise write_error(path, err) from None
    except BaseException:
        if not in_place:
            target.unlink(missing_ok=True)
        raise


def _fsync_folder(folder: Path) -> None:
    """Make a rename durable; a folder that cannot be opened (some network file systems) is left alone."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def stdout_error(err: OSError) -> NMTError:
    """A failed write to stdout: a broken pipe is not an error (`nmt ... | head`), anything else is."""
    if err.errno == errno.EPIPE:
        raise err
    return StdoutError("standard output", write_error("standard output", err).reason)


def flush_stdout() -> None:
    try:
        sys.stdout.flush()
    except OSError as err:
        raise stdout_error(err) from None
