"""Glossaries: a user's terminology, turned into each sentence's lexical constraints.

A glossary is a UTF-8 text file (`.gz` allowed), one entry a line: source term, a tab, target term; blank
lines are skipped. For a sentence, every entry whose source term occurs in it as whole words gives its target
term as a constraint (`nmt.constraints`). Words are runs of letters, digits and `_`, and each other non-space
character is a word of its own, so `Hund` does not occur in `Hunde`, and `E-Mail` occurs in `E-Mail` and in
`E - Mail`. Terms are matched as written, or regardless of case (`ignore_case`, Unicode case folding). Where
occurrences overlap the longest term wins, then the leftmost, as a tokenizer reads: with entries `New York` and
`York`, the sentence `in New York` yields `New York`'s target only.

A glossary is the user's file, so it is checked like one: a line without a tab, with more than one, with an
empty side or invalid UTF-8, and a source term given two different targets are user errors naming the file and
line; so are a line longer than `MAX_LINE_BYTES` and a file larger than `MAX_BYTES`, read no further than that.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from nmt.data.corpus import read_bounded_lines
from nmt.errors import NMTError

MAX_BYTES = 64 << 20  # a glossary of a million entries fits several times
MAX_LINE_BYTES = 4096

_WORD = re.compile(r"\w+|[^\w\s]")


@dataclass(frozen=True)
class Entry:
    source: str
    target: str
    line: int  # 1-based: its line in the file, or its place among the pairs given


class Glossary:
    """Entries indexed by the first word of their source term; `constraints_for(sentence)` finds them."""

    def __init__(self, entries: Iterable[Entry], name: str = "glossary", ignore_case: bool = False,
                 unit: str = "line"):
        self.name, self.ignore_case, self.unit = name, ignore_case, unit
        self.entries: list[Entry] = []
        seen: dict[tuple[str, ...], Entry] = {}
        self._by_first: dict[str, list[tuple[tuple[str, ...], Entry]]] = {}
        for entry in entries:
            words = tuple(self._words(entry.source))
            if words in seen:
                if seen[words].target != entry.target:
                    raise NMTError(f"{self.where(entry)}: the source term {entry.source!r} already has the target "
                                   f"{seen[words].target!r} ({self.unit} {seen[words].line})")
                continue
            seen[words] = entry
            self.entries.append(entry)
            self._by_first.setdefault(words[0], []).append((words, entry))
        for candidates in self._by_first.values():
            candidates.sort(key=lambda c: -len(c[0]))  # the longest term first

    @classmethod
    def load(cls, path: str | Path, ignore_case: bool = False) -> Glossary:
        """Read a glossary file (source TAB target per line)."""
        return cls(_read_entries(str(path)), str(path), ignore_case)

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, str]], name: str = "glossary", ignore_case: bool = False
                   ) -> Glossary:
        """A glossary from (source, target) pairs, checked as a file's lines are."""
        return cls((_entry(source, target, f"{name} entry {n}", n) for n, (source, target) in
                    enumerate(pairs, start=1)), name, ignore_case, unit="entry")

    def __len__(self) -> int:
        return len(self.entries)

    def where(self, entry: Entry) -> str:
        """How errors name an entry: `terms.tsv line 3` (`glossary entry 3` for one built from pairs)."""
        return f"{self.name} {self.unit} {entry.line}"

    def _words(self, text: str) -> list[str]:
        return _WORD.findall(text.casefold() if self.ignore_case else text)

    def matches(self, sentence: str) -> list[Entry]:
        """The entries whose source term occurs in `sentence`, leftmost-longest without overlap, in order."""
        words = self._words(sentence)
        found: list[Entry] = []
        i = 0
        while i < len(words):
            for term, entry in self._by_first.get(words[i], ()):
                if tuple(words[i : i + len(term)]) == term:
                    found.append(entry)
                    i += len(term)
                    break
            else:
                i += 1
        return found

    def constraints_for(self, sentence: str) -> list[str]:
        """The target terms of the entries found in `sentence`, each once, in the order of their source terms."""
        return list(dict.fromkeys(entry.target for entry in self.matches(sentence)))


def with_glossary(sentences: Sequence[str], constraints: Sequence[Sequence[str] | None] | None,
                  glossary: Glossary | None) -> list[list[str]] | None:
    """Each sentence's constraints: those given, then its glossary terms that are not among them already."""
    if glossary is None:
        return None if constraints is None else list(constraints)
    given = constraints if constraints is not None else [None] * len(sentences)
    if len(given) != len(sentences) or isinstance(given, str):
        raise NMTError(f"constraints: expected a list with one entry per sentence ({len(sentences)})")
    merged = []
    for i, (sentence, own) in enumerate(zip(sentences, given)):
        if isinstance(own, str):
            raise NMTError(f"line {i + 1}: constraints must be a list of strings, got a string")
        own = list(own or [])
        merged.append(own + [t for t in glossary.constraints_for(sentence) if t not in own])
    return merged


def _entry(source: str, target: str, where: str, line: int) -> Entry:
    source, target = source.strip(), target.strip()
    if not source:
        raise NMTError(f"{where}: the source term is empty")
    if not target:
        raise NMTError(f"{where}: the target term is empty")
    return Entry(source, target, line)


def _read_entries(path: str) -> Iterable[Entry]:
    size = 0
    for line_no, line in enumerate(read_bounded_lines(path, MAX_LINE_BYTES), start=1):
        size += len(line.encode("utf-8")) + 1
        if size > MAX_BYTES:
            raise NMTError(f"{path}: larger than the {MAX_BYTES >> 20} MiB a glossary may have (at line {line_no})")
        if not line.strip():
            continue
        fields = line.split("\t")
        where = f"{path} line {line_no}"
        if len(fields) != 2:
            raise NMTError(f"{where}: expected a source term, a tab and a target term; found "
                           f"{'no tab' if len(fields) == 1 else f'{len(fields) - 1} tabs'}")
        yield _entry(fields[0], fields[1], where, line_no)
