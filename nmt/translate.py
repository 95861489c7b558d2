"""Translating text: sentences in, sentences out, in input order; files streamed in chunks.

Output line N always translates input line N. An empty line gives an empty line without reaching the model; a
line longer than `MAX_SOURCE_TOKENS` subwords is cut to that length with a warning naming its line, never
dropped. Within a chunk sentences are sorted by length and batched by source tokens, so padding stays small,
then put back in input order. A file is read `CHUNK_LINES` lines at a time, so memory stays flat however long
it is.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
import torch
from tqdm import tqdm

from nmt.checkpoint import Translator, load_translator
from nmt.config import DecodeConfig
from nmt.data.batching import make_batches
from nmt.data.collate import pad_sources
from nmt.data.corpus import count_lines, read_lines
from nmt.data.subword import Subword
from nmt.errors import NMTError
from nmt.model.seq2seq import Seq2Seq
from nmt.precision import autocast, cpu_kind, dtype_name, resolve_device, resolve_dtype
from nmt.search import Hypothesis, options_from_config, translate_batch

log = logging.getLogger(__name__)

# The longest source (in subwords, EOS not counted) the model is given; longer lines are truncated.
MAX_SOURCE_TOKENS = 1024
# Lines read, translated and written at a time by `translate_file`.
CHUNK_LINES = 10_000


@dataclass
class Translation(Hypothesis):
    """A hypothesis with its detokenised text and the source ids the model saw (after truncation)."""

    text: str = ""
    source: list[int] = dataclasses.field(default_factory=list)

    @classmethod
    def of(cls, hyp: Hypothesis, text: str, source: list[int]) -> "Translation":
        fields = {f.name: getattr(hyp, f.name) for f in dataclasses.fields(Hypothesis)}
        return cls(**fields, text=text, source=source)


def load_ensemble(paths: list[str], device: torch.device) -> list[Translator]:
    """Load one or more checkpoints onto `device`; an ensemble's members must share their vocabularies."""
    if not paths:
        raise NMTError("no checkpoint given")
    translators = [load_translator(p) for p in paths]
    first = translators[0]
    for t in translators[1:]:
        for side, mine, theirs in (("source", t.src_model, first.src_model), ("target", t.tgt_model, first.tgt_model)):
            if mine.model_bytes != theirs.model_bytes:
                raise NMTError(f"{t.path}: its {side} SentencePiece model differs from {first.path}'s; "
                               "an ensemble needs checkpoints with the same vocabularies")
    for t in translators:
        t.model.to(device)
    return translators


def _encode(sentences: list[str], src_model: Subword, first_line: int) -> list[list[int] | None]:
    """Subword ids per sentence, None for an empty one; over-long ones truncated with a warning."""
    encoded: list[list[int] | None] = []
    for i, ids in enumerate(src_model.encode(sentences)):
        if not ids:
            encoded.append(None)
            continue
        if len(ids) > MAX_SOURCE_TOKENS:
            log.warning("line %d: %d subwords, truncated to the model's limit of %d", first_line + i, len(ids),
                        MAX_SOURCE_TOKENS)
            ids = ids[:MAX_SOURCE_TOKENS]
        encoded.append(ids)
    return encoded


def translate_sentences(
    models: list[Seq2Seq],
    src_model: Subword,
    tgt_model: Subword,
    sentences: list[str],
    decode: DecodeConfig,
    device: torch.device,
    dtype: torch.dtype,
    batch_tokens: int,
    with_attention: bool = False,
    sampling_temperature: float | None = None,
    sampling_topk: int = 0,
    generator: torch.Generator | None = None,
    first_line: int = 1,
) -> list[list[Translation]]:
    """Translate `sentences` (raw text) into `decode.nbest` translations each, best first, in input order.

    An empty sentence gets a single empty translation with score 0. `first_line` is the 1-based line number of
    `sentences[0]` in its file, for warnings.
    """
    encoded = _encode(sentences, src_model, first_line)
    results: list[list[Translation]] = [[Translation([], 0.0, 0.0)] if ids is None else [] for ids in encoded]
    todo = [i for i, ids in enumerate(encoded) if ids is not None]
    if not todo:
        return results
    lengths = np.array([len(encoded[i]) + 1 for i in todo])  # + EOS
    options = options_from_config(decode)
    for batch in make_batches(lengths, lengths, max(batch_tokens, 1), shuffle=False):
        indices = [todo[j] for j in batch]
        src, src_lengths = pad_sources([np.asarray(encoded[i], dtype=np.int64) for i in indices])
        with autocast(device, dtype):
            hyps = translate_batch(models, src.to(device), src_lengths, **options,
                                   sampling_temperature=sampling_temperature, sampling_topk=sampling_topk,
                                   generator=generator, with_attention=with_attention)
        flat = [h for sentence in hyps for h in sentence]
        texts = iter(tgt_model.decode([h.tokens for h in flat]))
        for i, sentence in zip(indices, hyps):
            results[i] = [Translation.of(h, next(texts), encoded[i]) for h in sentence]
    return results


def _stdin_lines() -> Iterator[str]:
    """Lines of stdin as UTF-8 without their line ends, like `read_lines` for a file."""
    for line_no, raw in enumerate(sys.stdin.buffer, start=1):
        raw = raw[:-1] if raw.endswith(b"\n") else raw
        raw = raw[:-1] if raw.endswith(b"\r") else raw
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise NMTError(f"<stdin> line {line_no}: invalid UTF-8 at byte {err.start} ({err.reason})") from None


def _chunks(lines: Iterable[str], size: int) -> Iterator[list[str]]:
    it = iter(lines)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def _alignment_record(index: int, t: Translation, src_model: Subword, tgt_model: Subword) -> str:
    """One JSON line: the source and target pieces (each ending with </s>) and the attention matrix, one row
    per target piece and one column per source piece."""
    if not t.source:
        return json.dumps({"index": index, "source": [], "target": [], "attention": []})
    attention = [] if t.attention is None else [[round(float(w), 4) for w in row] for row in t.attention]
    return json.dumps({"index": index, "source": src_model.id_to_piece(t.source) + ["</s>"],
                       "target": tgt_model.id_to_piece(t.tokens) + ["</s>"], "attention": attention},
                      ensure_ascii=False)


@dataclass
class TranslateStats:
    sentences: int
    src_tokens: int
    tgt_tokens: int
    seconds: float


def translate_file(
    checkpoints: list[str],
    input_path: str | None,
    output_path: str | None,
    beam: int | None = None,
    nbest: int | None = None,
    alpha: float | None = None,
    max_len_a: float | None = None,
    max_len_b: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
    batch_tokens: int | None = None,
    alignments_path: str | None = None,
    sampling_temperature: float | None = None,
    sampling_topk: int = 0,
    seed: int = 1,
    quiet: bool = False,
    greedy_floor: bool | None = None,
    threads: int = 0,
) -> TranslateStats:
    """Translate a file (stdin when `input_path` is None) line by line into `output_path` (stdout when None).

    Options left at None come from the first checkpoint's decode section. With nbest > 1 each input line gives
    `nbest` lines `index ||| translation ||| score` (0-based index). Several checkpoints decode as an ensemble.
    """
    for path in (output_path, alignments_path):
        if path is not None and input_path is not None and Path(path).resolve() == Path(input_path).resolve():
            raise NMTError(f"{path} is the input file too; writing it would erase the input")
    if threads:
        torch.set_num_threads(threads)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    translators = load_ensemble(checkpoints, torch_device)
    first = translators[0]
    overrides = {"beam": beam, "nbest": nbest, "alpha": alpha, "max_len_a": max_len_a, "max_len_b": max_len_b,
                 "batch_tokens": batch_tokens, "greedy_floor": greedy_floor}
    decode = dataclasses.replace(first.config.decode, **{k: v for k, v in overrides.items() if v is not None})
    if beam is None and decode.nbest > decode.beam:  # --nbest alone widens the checkpoint's beam to fit
        decode = dataclasses.replace(decode, beam=decode.nbest)
    if sampling_temperature is None and decode.nbest > decode.beam:
        raise NMTError(f"--nbest {decode.nbest} needs a beam of at least {decode.nbest} (beam is {decode.beam})")
    models = [t.model for t in translators]
    if alignments_path is not None and any(m.decoder.attention is None for m in models):
        raise NMTError("--alignments needs a model with attention; this checkpoint has attention: none")
    generator = None
    if sampling_temperature is not None:
        generator = torch.Generator(device=torch_device).manual_seed(seed)

    total = count_lines(input_path) if input_path is not None else None
    lines = read_lines(input_path) if input_path is not None else _stdin_lines()
    stats = TranslateStats(0, 0, 0, 0.0)
    start = time.perf_counter()
    with ExitStack() as stack:
        out: TextIO = (stack.enter_context(_open_output(output_path)) if output_path is not None else sys.stdout)
        align = stack.enter_context(_open_output(alignments_path)) if alignments_path is not None else None
        bar = stack.enter_context(tqdm(total=total, unit="sent", disable=True if quiet else None, file=sys.stderr,
                                            leave=False))
        for chunk in _chunks(lines, CHUNK_LINES):
            translations = translate_sentences(
                models, first.src_model, first.tgt_model, chunk, decode, torch_device, torch_dtype,
                decode.batch_tokens, with_attention=align is not None, sampling_temperature=sampling_temperature,
                sampling_topk=sampling_topk, generator=generator, first_line=stats.sentences + 1)
            for offset, hyps in enumerate(translations):
                index = stats.sentences + offset
                if decode.nbest > 1:
                    out.writelines(f"{index} ||| {h.text} ||| {h.score:.4f}\n" for h in hyps)
                else:
                    out.write(hyps[0].text + "\n")
                if align is not None:
                    align.write(_alignment_record(index, hyps[0], first.src_model, first.tgt_model) + "\n")
                stats.src_tokens += len(hyps[0].source)
                stats.tgt_tokens += len(hyps[0].tokens) + (1 if hyps[0].source else 0)
            stats.sentences += len(chunk)
            out.flush()
            bar.update(len(chunk))
    stats.seconds = time.perf_counter() - start
    if not quiet:
        seconds = max(stats.seconds, 1e-9)
        hardware = cpu_kind() if torch_device.type == "cpu" else torch.cuda.get_device_name(torch_device)
        log.info("translated %d sentences in %.1fs: %.1f sentences/s, %.0f target tokens/s (%s, %s, %s)",
                 stats.sentences, stats.seconds, stats.sentences / seconds, stats.tgt_tokens / seconds,
                 torch_device, dtype_name(torch_dtype), hardware)
    return stats


def _open_output(path: str | os.PathLike) -> TextIO:
    path = Path(path)
    if not path.parent.is_dir():
        raise NMTError(f"cannot write {path}: folder {path.parent} does not exist")
    try:
        return open(path, "w", encoding="utf-8", newline="\n")
    except OSError as err:
        raise NMTError(f"cannot write {path}: {err.strerror}") from None
