"""Reading parallel corpora: aligned text files, TSV and Hugging Face `datasets`, with checks and cleaning.

Lines are split on `\\n` only: real corpora contain tabs, form feeds and non-breaking spaces inside sentences,
which `str.splitlines` would treat as line ends and so silently misalign the two sides.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import itertools
import logging
import os
import select
import stat
import sys
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from nmt.config import SplitSpec, expand_path
from nmt.errors import NMTError

log = logging.getLogger(__name__)


BOM = b"\xef\xbb\xbf"


def open_binary(path: str | Path) -> io.BufferedIOBase:
    """Open a file for reading bytes, decompressing gzip (recognised by its magic number, not its name).

    The file is opened exactly once, so a pipe, a FIFO or a process substitution (`<(zcat ...)`) reads like
    a file: reopening one would find it drained, or block for ever.
    """
    path = Path(path)
    if not path.exists():
        raise NMTError(f"file not found: {path}")
    if path.is_dir():
        raise NMTError(f"{path}: is a directory, expected a file")
    try:
        raw = open(path, "rb")
    except OSError as err:
        raise NMTError(f"cannot read {path}: {err.strerror}") from None
    return _maybe_gunzip(raw)


def _maybe_gunzip(raw: io.BufferedReader) -> io.BufferedIOBase:
    try:
        magic = raw.peek(2)[:2]
    except (OSError, ValueError, AttributeError):  # a stream without peek (an in-memory stdin in tests)
        return raw
    return gzip.GzipFile(fileobj=raw, mode="rb") if magic == b"\x1f\x8b" else raw  # type: ignore[return-value]


def _decode_line(raw: bytes, name: str | Path, line_no: int) -> str:
    """One line's bytes (its `\n` removed) as text: a `\r` before the `\n` and a byte-order mark at the start
    of the file are not part of it, as sacrebleu and SentencePiece see it."""
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    if line_no == 1 and raw.startswith(BOM):
        raw = raw[len(BOM):]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise NMTError(f"{name} line {line_no}: invalid UTF-8 at byte {err.start} ({err.reason})") from None


def read_lines(path: str | Path) -> Iterator[str]:
    """Yield the lines of a UTF-8 text file without their `\n` (and without a `\r` before it, or a BOM).

    Invalid UTF-8 or a damaged gzip stream is reported with the file and line number.
    """
    line_no = 0
    with open_binary(path) as stream:
        try:
            for raw in stream:
                line_no += 1
                yield _decode_line(raw[:-1] if raw.endswith(b"\n") else raw, path, line_no)
        except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
            raise NMTError(f"{path} line {line_no + 1}: cannot read ({err})") from None


def read_bounded_lines(path: str | Path, max_line_bytes: int) -> Iterator[str]:
    """`read_lines` for the small side files a user hands a command (a glossary, prefixes): a line longer than
    `max_line_bytes` is a user error naming it, and no more of it than that is read, so a file without line
    breaks cannot fill the memory."""
    line_no = 0
    with open_binary(path) as stream:
        try:
            while raw := stream.readline(max_line_bytes + 2):
                line_no += 1
                body = raw[:-1] if raw.endswith(b"\n") else raw
                if len(body) > max_line_bytes:
                    raise NMTError(f"{path} line {line_no}: longer than {max_line_bytes} bytes")
                yield _decode_line(body, path, line_no)
        except (OSError, EOFError, zlib.error) as err:
            raise NMTError(f"{path} line {line_no + 1}: cannot read ({err})") from None


def count_lines(path: str | Path) -> int:
    with open_binary(path) as stream:
        count = 0
        last = b""
        try:
            while chunk := stream.read(1 << 20):
                count += chunk.count(b"\n")
                last = chunk
        except (OSError, EOFError, zlib.error) as err:  # a damaged .gz stream
            raise NMTError(f"{path} line {count + 1}: cannot read ({err})") from None
        return count + (1 if last and not last.endswith(b"\n") else 0)


def is_regular_file(path: str | Path | None) -> bool:
    """A file that can be read twice (to count its lines first); stdin, pipes and FIFOs cannot."""
    try:
        return path is not None and stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _more_ready(stream: io.BufferedIOBase) -> bool:
    """Whether the stream can give more bytes without waiting: always for a file, and for a pipe or a terminal
    when a writer has already sent them."""
    if isinstance(stream, gzip.GzipFile):
        return True
    try:
        fd = stream.fileno()
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return True
    except (OSError, ValueError, io.UnsupportedOperation):
        return True  # in memory
    return bool(select.select([fd], [], [], 0)[0])


def read_line_chunks(path: str | Path | None, max_lines: int) -> Iterator[list[str]]:
    """The lines of a file (stdin when `path` is None), read exactly once, in chunks of at most `max_lines`.

    A chunk also ends where the input pauses: when a pipe or a terminal delivers one line at a time, each line
    is yielded as soon as it has arrived, so its translation need not wait for the next one (fairseq-interactive
    waits for `--buffer-size` lines). A file always fills its chunks.
    """
    name = path if path is not None else "<stdin>"
    stream = open_binary(path) if path is not None else _maybe_gunzip(sys.stdin.buffer)
    line_no = 0
    pending: list[str] = []
    partial: list[bytes] = []
    try:
        with contextlib.ExitStack() as stack:
            if path is not None:
                stack.enter_context(stream)
            while data := stream.read1(1 << 16):
                *complete, rest = data.split(b"\n")
                for raw in complete:
                    line_no += 1
                    pending.append(_decode_line(b"".join([*partial, raw]), name, line_no))
                    partial = []
                partial.append(rest)
                while len(pending) >= max_lines:
                    yield pending[:max_lines]
                    del pending[:max_lines]
                if pending and not _more_ready(stream):
                    yield pending
                    pending = []
    except (OSError, EOFError, zlib.error) as err:
        raise NMTError(f"{name} line {line_no + 1}: cannot read ({err})") from None
    if any(partial):
        pending.append(_decode_line(b"".join(partial), name, line_no + 1))
    for start in range(0, len(pending), max_lines):
        yield pending[start:start + max_lines]


def _aligned_text_pairs(src_path: str, tgt_path: str) -> Iterator[tuple[str, str]]:
    src_lines, tgt_lines = read_lines(src_path), read_lines(tgt_path)
    for n, pair in enumerate(itertools.zip_longest(src_lines, tgt_lines), start=1):
        if pair[0] is None or pair[1] is None:
            raise NMTError(
                f"misaligned corpus: {src_path} has {count_lines(src_path)} lines "
                f"but {tgt_path} has {count_lines(tgt_path)}"
            )
        yield pair  # type: ignore[misc]


def _tsv_pairs(path: str, src_column: int, tgt_column: int) -> Iterator[tuple[str, str]]:
    for line_no, line in enumerate(read_lines(path), start=1):
        columns = line.split("\t")
        if max(src_column, tgt_column) >= len(columns):
            raise NMTError(
                f"{path} line {line_no}: expected at least {max(src_column, tgt_column) + 1} "
                f"tab-separated columns, found {len(columns)}"
            )
        yield columns[src_column], columns[tgt_column]


def _hf_pairs(spec: SplitSpec, src_lang: str, tgt_lang: str) -> Iterator[tuple[str, str]]:
    import datasets  # imported here: it is slow to import and most commands never need it
    from datasets.exceptions import DatasetsError

    files = [expand_path(f, "hf_files") for f in spec.hf_files] if spec.hf_files else None
    for f in files or []:
        if not Path(f).exists():
            raise NMTError(f"file not found: {f}")
    try:
        if files:
            ds = datasets.load_dataset(spec.hf, data_files=files, split="train")
        else:
            ds = datasets.load_dataset(spec.hf, spec.hf_config, split=spec.hf_split)
    except (ConnectionError, OSError, ValueError, RuntimeError, DatasetsError) as err:
        # RuntimeError: a hub dataset that still needs a loading script, which current `datasets` refuses.
        # DatasetGenerationError (a malformed local file) says only "an error occurred"; its cause says what.
        cause = err.__cause__ if isinstance(err, DatasetsError) and err.__cause__ else err
        reason = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        if files:
            raise NMTError(f"cannot load {spec.hf} files {', '.join(files)}: {reason}") from None
        where = f"{spec.hf}" + (f" ({spec.hf_config})" if spec.hf_config else "")
        raise NMTError(
            f"cannot load dataset {where}: {reason}; "
            "without network access, download it elsewhere and point hf_files at local parquet/jsonl/csv files, "
            "or use src/tgt text files"
        ) from None
    for row_no, row in enumerate(ds, start=1):
        try:
            record = row[spec.hf_field] if spec.hf_field else row
            src, tgt = record[src_lang], record[tgt_lang]
        except (KeyError, TypeError):
            field_desc = f"field {spec.hf_field!r} with keys" if spec.hf_field else "columns"
            raise NMTError(
                f"dataset {spec.hf} row {row_no}: expected {field_desc} {src_lang!r} and {tgt_lang!r}"
            ) from None
        if not isinstance(src, str) or not isinstance(tgt, str):
            raise NMTError(f"dataset {spec.hf} row {row_no}: sentences must be strings")
        yield src.replace("\n", " "), tgt.replace("\n", " ")


def iter_pairs(spec: SplitSpec, src_lang: str, tgt_lang: str, name: str = "corpus split"
               ) -> Iterator[tuple[str, str]]:
    """Stream the (source, target) pairs of one split, whatever its form."""
    forms = [name for name, used in (("src/tgt", spec.src or spec.tgt), ("tsv", spec.tsv), ("hf", spec.hf)) if used]
    if len(forms) != 1:
        raise NMTError(f"{name}: a corpus split needs exactly one of src+tgt, tsv or hf; got {forms or 'none'}")
    if spec.hf:
        return _hf_pairs(spec, src_lang, tgt_lang)
    if spec.tsv:
        return _tsv_pairs(expand_path(spec.tsv, "tsv"), spec.src_column, spec.tgt_column)
    if not (spec.src and spec.tgt):
        raise NMTError(f"{name}: a text corpus split needs both src and tgt files")
    return _aligned_text_pairs(expand_path(spec.src, "src"), expand_path(spec.tgt, "tgt"))


def read_pairs(spec: SplitSpec, src_lang: str, tgt_lang: str) -> tuple[list[str], list[str]]:
    src, tgt = [], []
    for s, t in iter_pairs(spec, src_lang, tgt_lang):
        src.append(s)
        tgt.append(t)
    return src, tgt


def describe_split(spec: SplitSpec) -> str:
    if spec.hf:
        return f"hf:{spec.hf}:{spec.hf_config}:{spec.hf_split}:{spec.hf_files}"
    if spec.tsv:
        return f"tsv:{spec.tsv}"
    return f"{spec.src} | {spec.tgt}"


def split_files(spec: SplitSpec) -> list[Path]:
    """The local files a split is read from (for hashing), empty for a hub dataset."""
    if spec.hf:
        return [Path(expand_path(f, "hf_files")) for f in spec.hf_files or []]
    if spec.tsv:
        return [Path(expand_path(spec.tsv, "tsv"))]
    return [Path(expand_path(p, "path")) for p in (spec.src, spec.tgt) if p]


@dataclass
class CleaningReport:
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def __str__(self) -> str:
        total = self.kept + sum(self.dropped.values())
        if not self.dropped:
            return f"kept all {total} pairs"
        reasons = ", ".join(f"{n} {why}" for why, n in sorted(self.dropped.items()))
        return f"kept {self.kept} of {total} pairs; dropped {reasons}"


def keep_pair(src_len: int, tgt_len: int, max_len: int, max_ratio: float, drop_empty: bool) -> str | None:
    """Why a training pair of these (subword) lengths is dropped, or None to keep it."""
    if drop_empty and (src_len == 0 or tgt_len == 0):
        return "with an empty side"
    if max_len and (src_len > max_len or tgt_len > max_len):
        return f"longer than {max_len} subwords"
    if max_ratio and min(src_len, tgt_len) > 0 and max(src_len, tgt_len) / min(src_len, tgt_len) > max_ratio:
        return f"with a length ratio over {max_ratio:g}"
    return None


def clean_pairs(
    pairs: Iterable[tuple[str, str]], max_len: int, max_ratio: float, drop_empty: bool = True
) -> tuple[list[tuple[str, str]], CleaningReport]:
    """Clean raw text pairs by whitespace-token lengths (the subword-level cleaning lives in the cache)."""
    report = CleaningReport()
    kept = []
    for src, tgt in pairs:
        reason = keep_pair(len(src.split()), len(tgt.split()), max_len, max_ratio, drop_empty)
        if reason:
            report.drop(reason)
        else:
            report.kept += 1
            kept.append((src, tgt))
    return kept, report
