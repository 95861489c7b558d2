"""nmt.glossary: terms found in a sentence become its constraints; a bad glossary is one line naming file and line."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nmt.glossary
from nmt.config import SubwordConfig
from nmt.data.corpus import read_lines
from nmt.data.subword import train_subword
from nmt.errors import NMTError
from nmt.glossary import Entry, Glossary, with_glossary
from nmt.translator import Translator
from translation_fixtures import make_checkpoint


def test_terms_are_found_as_whole_words_leftmost_longest() -> None:
    glossary = Glossary.from_pairs([("Hund", "dog"), ("New York", "New York"), ("York", "York"),
                                    ("E-Mail", "email"), ("rote Auto", "red car"), ("Auto", "car")])
    assert glossary.constraints_for("Der Hund und die Hunde.") == ["dog"]
    assert glossary.constraints_for("Hunde, Hundehütte") == []
    assert glossary.constraints_for("in New York, nicht York") == ["New York", "York"]
    assert glossary.constraints_for("Eine E-Mail, eine E - Mail.") == ["email"]
    assert glossary.constraints_for("das rote Auto und das Auto") == ["red car", "car"]
    assert glossary.constraints_for("Auto, Hund, Auto") == ["car", "dog"]  # each target once, in source order


def test_case_is_matched_as_the_user_chooses() -> None:
    pairs = [("Bank", "bench"), ("ÖL", "oil")]
    assert Glossary.from_pairs(pairs).constraints_for("die bank, das öl") == []
    assert Glossary.from_pairs(pairs, ignore_case=True).constraints_for("die BANK, das öl") == ["bench", "oil"]
    with pytest.raises(NMTError, match="entry 2: the source term 'bank' already has the target 'bench' "
                                       r"\(entry 1\)"):
        Glossary.from_pairs([("Bank", "bench"), ("bank", "shore")], ignore_case=True)
    assert len(Glossary.from_pairs([("Bank", "bench"), ("Bank", "bench"), ("bank", "shore")])) == 2


WORDS = ["ab", "cd", "ef", "gh", "ij"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.sampled_from(WORDS), min_size=1, max_size=3), max_size=5),
       st.lists(st.sampled_from(WORDS), max_size=10))
def test_found_terms_occur_do_not_overlap_and_leave_no_term_unfound(terms, sentence) -> None:
    glossary = Glossary.from_pairs({" ".join(t): f"t{i}" for i, t in enumerate(terms)}.items())
    by_target = {e.target: tuple(e.source.split()) for e in glossary.entries}
    covered: set[int] = set()
    start = 0
    for entry in glossary.matches(" ".join(sentence)):
        term = by_target[entry.target]
        where = next(i for i in range(start, len(sentence)) if tuple(sentence[i : i + len(term)]) == term)
        span = set(range(where, where + len(term)))
        assert not span & covered
        covered |= span
        start = where + len(term)
    for term in by_target.values():
        for i in range(len(sentence) - len(term) + 1):
            if tuple(sentence[i : i + len(term)]) == term:
                assert set(range(i, i + len(term))) & covered  # a longer or earlier term took its place


def test_glossary_terms_join_the_given_constraints_once() -> None:
    glossary = Glossary.from_pairs([("Hund", "dog"), ("Katze", "cat")])
    sentences = ["Hund und Katze", "nichts", "Hund"]
    assert with_glossary(sentences, [["cat"], None, ["puppy"]], glossary) == [["cat", "dog"], [], ["puppy", "dog"]]
    assert with_glossary(sentences, None, glossary) == [["dog", "cat"], [], ["dog"]]
    assert with_glossary(sentences, None, None) is None


# ------------------------------------------------------------------------------------------- a user's glossary file


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt", seed=3)


def _glossary_bytes(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "terms.tsv"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("data, message", [
    (b"ka\tlo\nkalo lo\n", "terms.tsv line 2: expected a source term, a tab and a target term; found no tab"),
    (b"ka\tlo\tmi\n", "terms.tsv line 1: expected a source term, a tab and a target term; found 2 tabs"),
    (b"\n  \t lo\n", "terms.tsv line 2: the source term is empty"),
    (b"ka\t \n", "terms.tsv line 1: the target term is empty"),
    (b"ka\tlo\nmi\tcaf\xe9\n", "terms.tsv line 2: invalid UTF-8"),
    (b"ka\tlo\n" + b"ka" * 3000 + b"\tlo\n", "terms.tsv line 2: longer than 4096 bytes"),
    (b"ka\tlo\nka\tmi\n", "terms.tsv line 2: the source term 'ka' already has the target 'lo' (line 1)"),
    (b"ka\tlo\nmi\tka\xce\xa9\n",
     "terms.tsv line 2: the constraint 'ka\u03a9' has characters the target vocabulary lacks"),
], ids=["no tab", "two tabs", "empty source", "empty target", "invalid UTF-8", "huge line", "two targets",
        "unknown characters"])
def test_a_bad_glossary_line_is_one_error_naming_file_and_line(data, message, tmp_path, checkpoint, run_cli,
                                                              user_error) -> None:
    source = tmp_path / "in.de"
    source.write_text("ka lo\n", encoding="utf-8")
    glossary = _glossary_bytes(tmp_path, data)
    user_error(run_cli("translate", "-c", checkpoint, "-i", source, "--glossary", glossary, "-q"), message)


def test_a_missing_or_oversized_glossary_is_one_error(tmp_path, checkpoint, run_cli, user_error,
                                                     monkeypatch) -> None:
    source = tmp_path / "in.de"
    source.write_text("ka lo\n", encoding="utf-8")
    user_error(run_cli("translate", "-c", checkpoint, "-i", source, "--glossary", tmp_path / "no.tsv"),
               "file not found", "no.tsv")
    monkeypatch.setattr(nmt.glossary, "MAX_BYTES", 1000)
    big = _glossary_bytes(tmp_path, b"".join(b"ka%d\tlo\n" % i for i in range(200)))
    user_error(run_cli("translate", "-c", checkpoint, "-i", source, "--glossary", big),
               f"{big}: larger than the 0 MiB a glossary may have (at line 1")


# ------------------------------------------------------------------------------------------- real words


@pytest.fixture
def multi30k_translator(data_dir: Path, tmp_path: Path) -> Translator:
    """A random tiny model with a SentencePiece model of real Multi30k text: the glossary's words are real
    pieces, the translations random but steered."""
    lines = []
    for lang in ("de", "en"):
        lines += [line for _, line in zip(range(3000), read_lines(data_dir / "multi30k" / f"train.{lang}.gz"))]
    spm = train_subword(lines, SubwordConfig(vocab_size=1000))
    path = make_checkpoint(tmp_path / "model.pt", seed=4, spm=spm)
    return Translator.load(path, device="cpu", beam=4, max_len_a=1.0, max_len_b=8)


GLOSSARY = [("Hund", "dog"), ("Fahrrad", "bicycle"), ("Strand", "beach"), ("Gitarre", "guitar"),
            ("roten Hemd", "red shirt"), ("Frau", "woman"), ("Feuerwehrmann", "firefighter")]


def test_a_glossary_of_real_words_puts_found_terms_in_and_adds_nothing_else(multi30k_translator, data_dir) -> None:
    translator = multi30k_translator
    glossary = Glossary.from_pairs(GLOSSARY)
    translator.check_glossary(glossary)
    sources = [s for s in read_lines(data_dir / "multi30k" / "test2016.de.gz")][:300]
    def occurring(sentence: str) -> list[str]:  # the targets whose source term is a word run of the sentence
        places = [(m.start(), target) for source, target in GLOSSARY
                  for m in re.finditer(rf"(?<!\w){re.escape(source)}(?!\w)", sentence)]
        return list(dict.fromkeys(target for _, target in sorted(places)))

    picked = [s for s in sources if occurring(s)][:8] + [s for s in sources if not occurring(s)][:4]
    found = [occurring(s) for s in picked]
    assert found == [glossary.constraints_for(s) for s in picked]
    assert sum(map(len, found)) >= 8 and any(len(f) > 1 for f in found)
    steered = translator.translate(picked, glossary=glossary)
    plain = translator.translate(picked)
    explicit = translator.translate(picked, constraints=found)
    for terms, out, base, exp in zip(found, steered, plain, explicit):
        for term in terms:
            assert re.search(rf"(?<!\w){re.escape(term)}(?!\w)", out), (term, out)
        assert out == (exp if terms else base)  # exactly its found terms: the others add nothing


def test_glossary_files_may_be_gzipped_and_name_their_lines(tmp_path) -> None:
    path = tmp_path / "terms.tsv.gz"
    path.write_bytes(gzip.compress("Hund\tdog\n\nKatze\tcat\n".encode()))
    glossary = Glossary.load(path)
    assert [(e.target, e.line) for e in glossary.entries] == [("dog", 1), ("cat", 3)]
    assert glossary.where(Entry("Katze", "cat", 3)) == f"{path} line 3"
