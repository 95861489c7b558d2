"""The one decode path: sentences in, translations out, for every caller (`nmt translate`, `nmt test`,
validation during training, the Python API and the service).

A `Translator` holds one model or an ensemble with its SentencePiece models, a device, a compute dtype and its
decoding options, bound once. Sentences are sorted by length and batched by source tokens, so padding stays
small, then put back in input order. An empty sentence gives one empty translation (score 0) without reaching
the model; a line longer than `MAX_LINE_SUBWORDS` subwords is cut to that length with a warning naming its
line, never dropped.

    import nmt
    translator = nmt.load("exp/multi30k_de_en/final.pt")
    translator.translate("Ein Mann fährt Fahrrad.")          # -> one string
    translator.translate(["Zwei Hunde.", "Ein Haus."], beam=1)  # -> a list of strings
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np
import torch

from nmt.checkpoint import TrainedModel, load_ensemble
from nmt.config import DecodeConfig, OptionStyle, decode_options
from nmt.constraints import Target, Targets, encode_phrase, encode_target, word_continuations
from nmt.data.batching import make_batches
from nmt.data.collate import pad_sources
from nmt.errors import NMTError
from nmt.glossary import Glossary, with_glossary
from nmt.precision import autocast, resolve_device, resolve_dtype
from nmt.quantize import quantize_decoder
from nmt.search import Hypothesis, Search
from nmt.shortlist import Shortlist, load_shortlist
from nmt.stream import BeamStream, streams
from nmt.tokens import MAX_LINE_SUBWORDS, with_eos

log = logging.getLogger(__name__)

# One sentence's subword ids, or None for an empty sentence (it never reaches the model).
Source = Sequence[int] | np.ndarray | None
# Per sentence: target phrases the translation must contain (lexical constraints), or None.
Constraints = Sequence[Sequence[str] | None]


@dataclass
class Translation(Hypothesis):
    """A hypothesis with its detokenised text, the source ids the model saw (after truncation) and the constraints
    it lacks (those that did not fit within the maximum output length)."""

    text: str = ""
    source: list[int] = dataclasses.field(default_factory=list)
    unmet: list[str] = dataclasses.field(default_factory=list)

    @classmethod
    def of(cls, hyp: Hypothesis, text: str, source: list[int], target: Target | None = None,
           unmet_all: bool = False) -> Translation:
        """`target`: what the search was asked for; with `unmet_all` (an empty line, never searched) every one of
        its constraints is unmet, else those the hypothesis lists."""
        fields = {f.name: getattr(hyp, f.name) for f in dataclasses.fields(Hypothesis)}
        missed = range(len(target.constraints)) if unmet_all and target else getattr(hyp, "unmet", ())
        unmet = [target.constraints[j].text for j in missed] if target is not None else []
        return cls(**fields, text=text, source=source, unmet=unmet)


class Translator:
    """Translates with one model or an ensemble; decoding options are bound when it is built."""

    def __init__(self, members: list[TrainedModel], decode: DecodeConfig, device: torch.device,
                 dtype: torch.dtype, shortlist: Shortlist | None = None):
        if not members:
            raise NMTError("no checkpoint given")
        if dtype == torch.qint8:
            for member in members:
                quantize_decoder(member.model)
        self.members = members
        self.models = [m.model for m in members]
        self.src_spm, self.tgt_spm = members[0].src_spm, members[0].tgt_spm
        self.decode = decode
        self.shortlist = shortlist
        self.search = Search(decode, shortlist)
        self.device, self.dtype = device, dtype
        self.generator = (torch.Generator(device=device).manual_seed(decode.seed)
                          if decode.temperature is not None else None)

    @classmethod
    def load(cls, paths: str | os.PathLike | Sequence[str | os.PathLike], device: str = "auto",
             dtype: str = "auto", style: OptionStyle = "api", shortlist: str | os.PathLike | None = None,
             **options: Any) -> Translator:
        """Load a checkpoint (or several, decoded as an ensemble) with the first one's decoding options, changed
        by `options` (DecodeConfig fields; None leaves one as it is); `shortlist` is a file of `nmt shortlist`."""
        paths = [str(p) for p in paths] if isinstance(paths, (list, tuple)) else [str(paths)]
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)
        members = load_ensemble(paths, torch_device)
        decode = decode_options(members[0].config.decode, options, style)
        table = None if shortlist is None else load_shortlist(shortlist, members[0].src_spm, members[0].tgt_spm)
        return cls(members, decode, torch_device, torch_dtype, table)

    @property
    def files(self) -> list[str]:
        """Every file this translator was read from: its checkpoints and its shortlist."""
        shortlist = [self.shortlist.path] if self.shortlist is not None and self.shortlist.path else []
        return [m.path for m in self.members] + shortlist

    @property
    def streams(self) -> bool:
        """Whether sentences may join a running search of these options between its steps (`stream`)."""
        return streams(self.decode, self.shortlist is not None)

    def stream(self, with_attention: bool = False) -> BeamStream:
        """A beam search that sentences join and leave between its steps (`nmt.stream`), for a service: each
        sentence ends as `translate_encoded` would translate it; `finish` turns its hypotheses into translations."""
        return BeamStream(self.models, self.decode, self.device, self.dtype, with_attention)

    def finish(self, source: Source, hyps: list[Hypothesis]) -> list[Translation]:
        """A streamed sentence's hypotheses as translations (one SentencePiece call each: a list would start a
        pool of threads)."""
        ids = [int(t) for t in source] if source is not None else []
        return [Translation.of(h, self.tgt_spm.decode(h.tokens), ids) for h in hyps]

    @property
    def has_attention(self) -> bool:
        return all(m.decoder.attention is not None for m in self.models)

    def with_options(self, style: OptionStyle = "api", **options: Any) -> Translator:
        """This translator's models with other decoding options (checked, and named in the caller's terms)."""
        decode = decode_options(self.decode, options, style)
        if decode == self.decode:
            return self
        return Translator(self.members, decode, self.device, self.dtype, self.shortlist)

    # ------------------------------------------------------------------------------------------- the decode loop

    def encode(self, sentences: Sequence[str], first_line: int = 1) -> list[list[int] | None]:
        """Subword ids per sentence, None for an empty one; over-long ones truncated with a warning naming their
        line (`first_line` is the 1-based line of `sentences[0]` in its file)."""
        encoded: list[list[int] | None] = []
        for i, ids in enumerate(self.src_spm.encode(list(sentences))):
            if not ids:
                encoded.append(None)
                continue
            if len(ids) > MAX_LINE_SUBWORDS:
                log.warning("line %d: %d subwords, truncated to the model's limit of %d", first_line + i, len(ids),
                            MAX_LINE_SUBWORDS)
                ids = ids[:MAX_LINE_SUBWORDS]
            encoded.append(ids)
        return encoded

    def encode_targets(self, count: int, constraints: Constraints | None = None,
                       prefixes: Sequence[str | None] | None = None, first_line: int = 1, name: str = "",
                       prefix_name: str | None = None) -> list[Target | None] | None:
        """Each of `count` sentences' constraints (target phrases) and prefix as target subwords, None when no
        sentence has any; errors name the line (`name line N`, `prefix_name line N` for a prefix read apart)."""
        if constraints is None and prefixes is None:
            return None
        for what, given in (("constraints", constraints), ("prefixes", prefixes)):
            if given is not None and (isinstance(given, str) or len(given) != count):
                raise NMTError(f"{what}: expected a list with one entry per sentence ({count})")
        where = lambda file, i: f"{file} line {first_line + i}".lstrip()  # noqa: E731
        targets = [encode_target(self.tgt_spm, None if constraints is None else constraints[i],
                                 None if prefixes is None else prefixes[i], where(name, i),
                                 where(prefix_name if prefix_name is not None else name, i))
                   for i in range(count)]
        if all(t is None for t in targets):
            return None
        if self.decode.temperature is not None:
            raise NMTError("constraints and prefixes need beam search: they cannot be used with temperature sampling")
        return targets

    def check_glossary(self, glossary: Glossary) -> None:
        """Every target term of `glossary` can be written with the target vocabulary (errors name its line)."""
        for entry in glossary.entries:
            encode_phrase(self.tgt_spm, entry.target, glossary.where(entry))

    def iter_translations(self, sources: Sequence[Source], with_attention: bool = False,
                          targets: Sequence[Target | None] | None = None
                          ) -> Iterator[tuple[list[int], list[list[Translation]]]]:
        """Translate encoded sentences batch by batch: yields (positions in `sources`, their translations),
        empty sentences first, then the batches in length order. Every caller's loop is this one. Sentences with
        a target (`encode_targets`) are batched apart, for `nmt.dba`'s constrained search."""
        empty = [i for i, ids in enumerate(sources) if ids is None or len(ids) == 0]
        if empty:
            yield empty, [[Translation.of(Hypothesis([], 0.0, 0.0), "", [], None if targets is None else targets[i],
                                          unmet_all=True)] for i in empty]
        todo = [i for i, ids in enumerate(sources) if ids is not None and len(ids) > 0]
        groups = [todo] if targets is None else [[i for i in todo if targets[i] is None],
                                                 [i for i in todo if targets[i] is not None]]
        for group in groups:
            if group:
                yield from self._batches(sources, group, with_attention, targets)

    def _batches(self, sources: Sequence[Source], todo: list[int], with_attention: bool,
                 targets: Sequence[Target | None] | None) -> Iterator[tuple[list[int], list[list[Translation]]]]:
        lengths = with_eos(np.array([len(sources[i]) for i in todo]))
        for batch in make_batches(lengths, lengths, self.decode.batch_tokens, shuffle=False):
            positions = [todo[j] for j in batch]
            wanted = [None] * len(positions) if targets is None else [targets[i] for i in positions]
            search_targets = Targets(wanted, word_continuations(self.tgt_spm)) if any(wanted) else None
            src, src_lengths = pad_sources([np.asarray(sources[i], dtype=np.int64) for i in positions])
            with autocast(self.device, self.dtype):
                hyps = self.search.generate(self.models, src.to(self.device), src_lengths, with_attention,
                                            self.generator, search_targets)
            texts = iter(self.tgt_spm.decode([h.tokens for sentence in hyps for h in sentence]))
            yield positions, [[Translation.of(h, next(texts), [int(t) for t in sources[i]], target) for h in sentence]
                              for i, target, sentence in zip(positions, wanted, hyps)]

    def translate_encoded(self, sources: Sequence[Source], with_attention: bool = False,
                          targets: Sequence[Target | None] | None = None) -> list[list[Translation]]:
        """`decode.nbest` translations of each encoded sentence, best first, in input order."""
        results: list[list[Translation]] = [[] for _ in sources]
        for positions, translations in self.iter_translations(sources, with_attention, targets):
            for i, translation in zip(positions, translations):
                results[i] = translation
        return results

    def translate_lines(self, sentences: Sequence[str], first_line: int = 1, with_attention: bool = False,
                        constraints: Constraints | None = None, prefixes: Sequence[str | None] | None = None
                        ) -> list[list[Translation]]:
        """`decode.nbest` translations of each raw sentence, best first, in input order; `constraints` (target
        phrases per sentence) must appear in them, and each starts with its sentence's prefix (`nmt.dba`)."""
        targets = self.encode_targets(len(sentences), constraints, prefixes, first_line)
        results = self.translate_encoded(self.encode(sentences, first_line), with_attention, targets)
        for i, hyps in enumerate(results):
            warn_if_cut(hyps, first_line + i)
            warn_if_unmet(hyps, first_line + i)
        return results

    # ------------------------------------------------------------------------------------------- the Python API

    @overload
    def translate(self, text: str, constraints: Sequence[str] | None = None, prefix: str | None = None,
                  glossary: Glossary | None = None, **options: Any) -> str: ...

    @overload
    def translate(self, text: Sequence[str], constraints: Constraints | None = None,
                  prefix: Sequence[str | None] | None = None, glossary: Glossary | None = None,
                  **options: Any) -> list[str]: ...

    def translate(self, text: str | Sequence[str], constraints: Any = None, prefix: Any = None,
                  glossary: Glossary | None = None, **options: Any) -> str | list[str]:
        """The best translation of a sentence (a string), or of each sentence of a list (a list, in order).
        `constraints`: target phrases the translation must contain (a list of them per sentence, for a list);
        `prefix`: the text it must start with (one per sentence, for a list); `glossary`: its terms found in a
        sentence become constraints too. `options` are decoding options for this call (beam=1, alpha=0.6, ...)."""
        single = isinstance(text, str)
        if single:
            constraints = None if constraints is None else [constraints]
            prefix = None if prefix is None else [prefix]
        hyps = self.translate_nbest([text] if single else list(text), constraints, prefix, glossary, **options)
        texts = [h[0].text for h in hyps]
        return texts[0] if single else texts

    def translate_nbest(self, sentences: Sequence[str], constraints: Constraints | None = None,
                        prefix: Sequence[str | None] | None = None, glossary: Glossary | None = None,
                        **options: Any) -> list[list[Translation]]:
        """`nbest` translations per sentence with their scores, ids, the constraints they lack and (with
        `with_attention=True`) attention; the other arguments as `translate`'s; `options` are decoding options
        for this call, such as nbest=5 or beam=8."""
        with_attention = bool(options.pop("with_attention", False))
        sentences = list(sentences)
        _check_sentences(sentences)
        return self.with_options(**options).translate_lines(sentences, with_attention=with_attention,
                                                            constraints=with_glossary(sentences, constraints, glossary),
                                                            prefixes=prefix)


def warn_if_cut(hyps: list[Translation], line: int) -> None:
    """A translation that stopped at the output limit (a runaway line) is named, since it may be cut short."""
    if len(hyps[0].tokens) >= MAX_LINE_SUBWORDS:
        log.warning("line %d: the translation stopped at the limit of %d subwords", line, MAX_LINE_SUBWORDS)


def warn_if_unmet(hyps: list[Translation], line: int) -> None:
    """A translation without all its constraints is named (the search forbids ending before they are all met,
    so only the maximum output length, or an empty line, leaves one out)."""
    if hyps[0].unmet:
        why = "the line is empty" if not hyps[0].source else "no room within the maximum output length"
        log.warning("line %d: the translation lacks the constraints %s (%s)", line,
                    ", ".join(repr(text) for text in hyps[0].unmet), why)


def _check_sentences(sentences: list[Any]) -> None:
    for i, sentence in enumerate(sentences):
        if not isinstance(sentence, str):
            raise NMTError(f"sentence {i} is a {type(sentence).__name__}, not a string")
