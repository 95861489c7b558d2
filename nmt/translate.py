"""`nmt translate`: a file (or stdin) in, its translation out, line for line.

Output line N always translates input line N. The input is read exactly once, in chunks of up to
`CHUNK_LINES` lines, so memory stays flat however long it is and a pipe or a FIFO reads like a file; a chunk
also ends where a pipe pauses, so that lines typed one at a time are translated one at a time. Within a chunk
the `Translator` sorts sentences by length; the lines are written back in order as soon as every line before
them is done.

Each line's translation may be steered (`nmt.dba`): with `constraints`, the tab-separated fields after the source
are target phrases it must contain (fairseq-interactive's format); line N of a prefix file is the text line N's
translation starts with (an empty line: none), and a glossary's terms found in a line become its constraints too.

Outputs follow `nmt.outputs`: no output may be an input (the source, stdin, a checkpoint, a prefix file, a
glossary) or another output; a file is written beside its path and renamed over it only when every line is
done, so a failed or interrupted run leaves the old file as it was. Standard output gets each line as soon as it
can be written in order.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TextIO

from tqdm import tqdm

from nmt.constraints import Target
from nmt.data.corpus import count_lines, is_regular_file, read_bounded_lines, read_line_chunks
from nmt.data.subword import Subword
from nmt.errors import NMTError
from nmt.glossary import Glossary, with_glossary
from nmt.outputs import (atomic_output, check_outputs, check_writable, standard_input, standard_output,
                         stdout_error)
from nmt.precision import describe_device, dtype_name
from nmt.translator import Translation, Translator, warn_if_cut, warn_if_unmet

log = logging.getLogger(__name__)

# Lines read and translated at a time (fewer where a pipe pauses): large enough to sort into full batches.
CHUNK_LINES = 10_000
# A prefix is at most MAX_LINE_SUBWORDS subwords: a longer line of the prefix file is refused unread.
MAX_PREFIX_BYTES = 1 << 16


@dataclass
class TranslateStats:
    sentences: int = 0
    src_tokens: int = 0
    tgt_tokens: int = 0
    seconds: float = 0.0


def alignment_record(index: int, t: Translation, src_spm: Subword, tgt_spm: Subword) -> dict:
    """The source and target pieces (each ending with </s>) and the attention matrix, one row per target piece
    and one column per source piece."""
    if not t.source:
        return {"index": index, "source": [], "target": [], "attention": []}
    attention = [] if t.attention is None else [[round(float(w), 4) for w in row] for row in t.attention]
    return {"index": index, "source": src_spm.id_to_piece(t.source) + ["</s>"],
            "target": tgt_spm.id_to_piece(t.tokens) + ["</s>"], "attention": attention}


@dataclass
class Steering:
    """What steers each line's translation in `nmt translate` (`--constraints`, `--prefix`, `--glossary`)."""

    constraints: bool = False  # the tab-separated fields after each line's source are its constraints
    prefix: str | None = None  # a file whose line N is the text line N's translation starts with
    glossary: Glossary | None = None

    @property
    def active(self) -> bool:
        return self.constraints or self.prefix is not None or self.glossary is not None

    def files(self) -> list[str]:
        """The files it reads: inputs that no output may be."""
        return [p for p in (self.prefix, self.glossary.name if self.glossary else None) if p is not None]


class _SteeredLines:
    """Splits each chunk of input lines into sources and targets (`Translator.encode_targets`), reading the prefix
    file line for line with the input."""

    def __init__(self, translator: Translator, steering: Steering, input_path: str | None):
        self.translator, self.steering = translator, steering
        self.name = input_path if input_path is not None else "<stdin>"
        if steering.active and translator.decode.temperature is not None:
            raise NMTError("--constraints, --prefix and --glossary need beam search: they cannot be used with "
                           "--temperature")
        if steering.glossary is not None:
            translator.check_glossary(steering.glossary)
        self.prefixes = None
        if steering.prefix is not None:
            if is_regular_file(input_path) and is_regular_file(steering.prefix):
                _check_aligned(input_path, steering.prefix)
            self.prefixes = read_bounded_lines(steering.prefix, MAX_PREFIX_BYTES)

    def split(self, chunk: list[str], first: int) -> tuple[list[str], list[Target | None] | None]:
        """chunk: lines `first`, `first + 1`, ... of the input -> their sources and targets."""
        if not self.steering.active:
            return chunk, None
        sources, constraints = chunk, None
        if self.steering.constraints:
            fields = [line.split("\t") for line in chunk]
            sources, constraints = [f[0] for f in fields], [f[1:] for f in fields]
        prefixes = None if self.prefixes is None else [self._prefix(first + i) for i in range(len(chunk))]
        return sources, self.translator.encode_targets(
            len(chunk), with_glossary(sources, constraints, self.steering.glossary), prefixes, first, self.name,
            self.steering.prefix)

    def _prefix(self, line: int) -> str:
        prefix = next(self.prefixes, None)
        if prefix is None:
            raise NMTError(f"misaligned: {self.steering.prefix} has fewer lines than {self.name} (none for line "
                           f"{line})")
        return prefix

    def finish(self, lines: int) -> None:
        """After the input's last line: the prefix file must end there too."""
        if self.prefixes is not None and next(self.prefixes, None) is not None:
            raise NMTError(f"misaligned: {self.steering.prefix} has more lines than {self.name} ({lines})")


def _check_aligned(input_path: str, prefix_path: str) -> None:
    lines, prefixes = count_lines(input_path), count_lines(prefix_path)
    if lines != prefixes:
        raise NMTError(f"misaligned: {prefix_path} has {prefixes} lines but {input_path} has {lines}; --prefix needs "
                       "one line (empty for none) per input line")


class _OrderedWriter:
    """Writes each line's translation once every earlier line's is written: batches finish in length order."""

    def __init__(self, translator: Translator, out: TextIO, align: TextIO | None, stats: TranslateStats):
        self.translator, self.out, self.align, self.stats = translator, out, align, stats
        self.waiting: dict[int, list[Translation]] = {}
        self.written = 0  # lines written so far

    def add(self, first: int, positions: list[int], translations: list[list[Translation]]) -> None:
        for position, hyps in zip(positions, translations):
            warn_if_cut(hyps, first + position + 1)
            warn_if_unmet(hyps, first + position + 1)
            self.waiting[first + position] = hyps
        while self.written in self.waiting:
            self._write(self.written, self.waiting.pop(self.written))
            self.written += 1

    def _write(self, index: int, hyps: list[Translation]) -> None:
        nbest = self.translator.decode.nbest
        if nbest > 1:
            self.out.writelines(f"{index} ||| {h.text} ||| {h.score:.4f}\n" for h in hyps)
        else:
            self.out.write(hyps[0].text + "\n")
        if self.align is not None:
            record = alignment_record(index, hyps[0], self.translator.src_spm, self.translator.tgt_spm)
            self.align.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.stats.src_tokens += len(hyps[0].source)
        self.stats.tgt_tokens += len(hyps[0].tokens) + (1 if hyps[0].source else 0)


def translate_file(translator: Translator, input_path: str | None, output_path: str | None,
                   alignments_path: str | None = None, quiet: bool = False,
                   buffer_lines: int = CHUNK_LINES, steering: Steering | None = None) -> TranslateStats:
    """Translate a file (stdin when `input_path` is None) line by line into `output_path` (stdout when None).

    With nbest > 1 each input line gives `nbest` lines `index ||| translation ||| score` (0-based index);
    `alignments_path` gets one JSON record per line (`alignment_record`); `steering` adds constraints, prefixes
    and a glossary.
    """
    if buffer_lines < 1:
        raise NMTError(f"--buffer-lines must be at least 1, got {buffer_lines}")
    if alignments_path is not None and not translator.has_attention:
        raise NMTError("--alignments needs a model with attention; this checkpoint has attention: none")
    steering = steering or Steering()
    inputs = [input_path if input_path is not None else standard_input(), *translator.files, *steering.files()]
    check_outputs([output_path if output_path is not None else standard_output(), alignments_path], inputs)
    for path in (output_path, alignments_path):
        if path is not None:
            check_writable(path)
    lines = _SteeredLines(translator, steering, input_path)
    total = count_lines(input_path) if is_regular_file(input_path) else None
    stats = TranslateStats()
    start = time.perf_counter()
    writer: _OrderedWriter | None = None
    try:
        with ExitStack() as stack:
            out = stack.enter_context(atomic_output(output_path)) if output_path is not None else _Stdout()
            align = stack.enter_context(atomic_output(alignments_path)) if alignments_path is not None else None
            bar = stack.enter_context(tqdm(total=total, unit="sent", disable=True if quiet else None,
                                           file=sys.stderr, leave=False))
            writer = _OrderedWriter(translator, out, align, stats)
            for chunk in read_line_chunks(input_path, buffer_lines):
                sources, targets = lines.split(chunk, stats.sentences + 1)
                encoded = translator.encode(sources, first_line=stats.sentences + 1)
                for positions, translations in translator.iter_translations(encoded, align is not None, targets):
                    writer.add(stats.sentences, positions, translations)
                    bar.update(len(positions))
                stats.sentences += len(chunk)
                out.flush()
            lines.finish(stats.sentences)
    except KeyboardInterrupt:
        done = writer.written if writer is not None else 0
        where = f"{output_path} is left as it was" if output_path is not None else \
            f"the first {done} lines were written"
        log.warning("interrupted after %d translated lines: %s", done, where)
        raise
    stats.seconds = time.perf_counter() - start
    if not quiet:
        _log_speed(translator, stats)
    return stats


class _Stdout:
    """sys.stdout whose write errors (a full disk behind a redirection) are one-line user errors."""

    def write(self, text: str) -> None:
        try:
            sys.stdout.write(text)
        except OSError as err:
            raise stdout_error(err) from None

    def writelines(self, lines: list[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        try:
            sys.stdout.flush()
        except OSError as err:
            raise stdout_error(err) from None


def _log_speed(translator: Translator, stats: TranslateStats) -> None:
    seconds = max(stats.seconds, 1e-9)
    log.info("translated %d sentences in %.1fs: %.1f sentences/s, %.0f target tokens/s (%s, %s, %s)",
             stats.sentences, stats.seconds, stats.sentences / seconds, stats.tgt_tokens / seconds,
             translator.device, dtype_name(translator.dtype), describe_device(translator.device))
