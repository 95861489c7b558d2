"""nmt.data.corpus: every corpus form reads the same pairs; every bad corpus is a one-line user error."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from nmt.config import SplitSpec
from nmt.data.corpus import CleaningReport, clean_pairs, count_lines, keep_pair, read_lines, read_pairs
from nmt.errors import NMTError

# Characters that `str.splitlines` treats as line ends but a corpus keeps inside a sentence, plus tab and nbsp.
INSIDE_A_LINE = ["\t", "\u00a0", "\u2028", "\u2029", "\u0085", "\x0c", "\x0b", "\x1c", "\x1d", "\x1e", "\r"]

# One line of text: anything but `\n` (the only line end) and surrogates (not encodable), not ending in `\r`
# (a `\r` before the `\n` is a CRLF line end and is dropped).
line_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n")).filter(
    lambda s: not s.endswith("\r")
)
PAIRS = [("ein Hund\tläuft", "a dog\u00a0runs"), ("zwei\u2028Katzen", "two\u0085cats"), ("", "empty source"),
         ("form\x0cfeed", "x\ry")]


def _write(path: Path, lines: list[str], newline: str = "\n", compress: bool = False) -> Path:
    data = "".join(line + newline for line in lines).encode("utf-8")
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def _text_spec(tmp_path: Path, pairs, compress: bool = False, newline: str = "\n") -> SplitSpec:
    suffix = ".gz" if compress else ""
    src = _write(tmp_path / f"s.de{suffix}", [s for s, _ in pairs], newline, compress)
    tgt = _write(tmp_path / f"s.en{suffix}", [t for _, t in pairs], newline, compress)
    return SplitSpec(src=str(src), tgt=str(tgt))


def _read(spec: SplitSpec) -> list[tuple[str, str]]:
    src, tgt = read_pairs(spec, "de", "en")
    return list(zip(src, tgt))


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep the `datasets` cache of each test in its own tmp folder."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    return tmp_path / "hf_cache"


@pytest.mark.parametrize("compress", [False, True])
def test_text_pairs_round_trip(tmp_path: Path, compress: bool):
    assert _read(_text_spec(tmp_path, PAIRS, compress)) == PAIRS


def test_gzip_is_recognised_by_content_not_name(tmp_path: Path):
    path = tmp_path / "plain_name.txt"
    path.write_bytes(gzip.compress("eins\nzwei\n".encode()))
    assert list(read_lines(path)) == ["eins", "zwei"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(line_text, max_size=8), compress=st.booleans())
def test_lines_split_on_newline_only(tmp_path: Path, lines: list[str], compress: bool):
    path = _write(tmp_path / "f", lines, compress=compress)
    assert list(read_lines(path)) == lines
    assert count_lines(path) == len(lines)


@pytest.mark.parametrize("char", INSIDE_A_LINE)
def test_special_characters_stay_inside_their_line(tmp_path: Path, char: str):
    pairs = [(f"a{char}b", "one"), ("c", f"two{char}three"), ("d", "e")]
    assert _read(_text_spec(tmp_path, pairs)) == pairs


def test_crlf_line_ends(tmp_path: Path):
    assert _read(_text_spec(tmp_path, PAIRS[:2], newline="\r\n")) == PAIRS[:2]


def test_last_line_without_newline(tmp_path: Path):
    path = tmp_path / "f"
    path.write_bytes(b"a\nb")
    assert list(read_lines(path)) == ["a", "b"] and count_lines(path) == 2


@pytest.mark.parametrize("compress", [False, True])
def test_misaligned_sides_name_both_files_and_counts(tmp_path: Path, compress: bool):
    src = _write(tmp_path / "m.de", ["a", "b", "c"], compress=compress)
    tgt = _write(tmp_path / "m.en", ["a", "b"], compress=compress)
    for spec, counts in [(SplitSpec(src=str(src), tgt=str(tgt)), "has 3 lines but .* has 2"),
                         (SplitSpec(src=str(tgt), tgt=str(src)), "has 2 lines but .* has 3")]:
        with pytest.raises(NMTError, match=counts) as err:
            _read(spec)
        assert str(src) in str(err.value) and str(tgt) in str(err.value)


@pytest.mark.parametrize("compress", [False, True])
def test_invalid_utf8_names_file_and_line(tmp_path: Path, compress: bool):
    data = b"gut\nauch gut\nkaputt \xff\xfe hier\n"
    path = tmp_path / "bad.de"
    path.write_bytes(gzip.compress(data) if compress else data)
    with pytest.raises(NMTError) as err:
        list(read_lines(path))
    assert f"{path} line 3" in str(err.value) and "UTF-8" in str(err.value)


def test_missing_file(tmp_path: Path):
    spec = SplitSpec(src=str(tmp_path / "nope.de"), tgt=str(tmp_path / "nope.en"))
    with pytest.raises(NMTError, match="file not found: .*nope.de"):
        _read(spec)


def test_directory_instead_of_file(tmp_path: Path):
    with pytest.raises(NMTError, match="is a directory"):
        list(read_lines(tmp_path))


def test_env_var_in_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    _text_spec(tmp_path, PAIRS)
    monkeypatch.setenv("NMT_TEST_DIR", str(tmp_path))
    assert _read(SplitSpec(src="$NMT_TEST_DIR/s.de", tgt="${NMT_TEST_DIR}/s.en")) == PAIRS


@pytest.mark.parametrize("spec", [SplitSpec(), SplitSpec(src="a", tsv="b"), SplitSpec(tsv="a", hf="json")])
def test_split_needs_exactly_one_form(spec: SplitSpec):
    with pytest.raises(NMTError, match="exactly one of"):
        _read(spec)


def test_text_split_needs_both_sides(tmp_path: Path):
    with pytest.raises(NMTError, match="both src and tgt"):
        _read(SplitSpec(src=str(_write(tmp_path / "a", ["x"]))))


# --- TSV ---


def test_tsv_columns(tmp_path: Path):
    path = _write(tmp_path / "c.tsv", ["id1\tHallo Welt\tHello world", "id2\tJa\u00a0ja\tYes yes"])
    assert _read(SplitSpec(tsv=str(path), src_column=1, tgt_column=2)) == [("Hallo Welt", "Hello world"),
                                                                          ("Ja\u00a0ja", "Yes yes")]
    assert _read(SplitSpec(tsv=str(path), src_column=2, tgt_column=1))[0] == ("Hello world", "Hallo Welt")


def test_tsv_too_few_columns_names_line(tmp_path: Path):
    path = _write(tmp_path / "c.tsv", ["a\tb", "a\tb", "only one column"])
    with pytest.raises(NMTError, match=r"c\.tsv line 3: expected at least 2 tab-separated columns, found 1"):
        _read(SplitSpec(tsv=str(path)))


# --- Hugging Face datasets from local files ---


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_hf_jsonl_translation_layout(tmp_path: Path, hf_cache: Path):
    path = _jsonl(tmp_path / "t.jsonl", [{"translation": {"de": s, "en": t}} for s, t in PAIRS])
    assert _read(SplitSpec(hf="json", hf_files=[str(path)])) == PAIRS


def test_hf_jsonl_language_columns(tmp_path: Path, hf_cache: Path):
    path = _jsonl(tmp_path / "c.jsonl", [{"de": s, "en": t, "id": i} for i, (s, t) in enumerate(PAIRS)])
    assert _read(SplitSpec(hf="json", hf_files=[str(path)], hf_field=None)) == PAIRS


def test_hf_parquet_both_layouts(tmp_path: Path, hf_cache: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    nested = tmp_path / "nested.parquet"
    pq.write_table(pa.table({"translation": [{"de": s, "en": t} for s, t in PAIRS]}), nested)
    flat = tmp_path / "flat.parquet"
    pq.write_table(pa.table({"de": [s for s, _ in PAIRS], "en": [t for _, t in PAIRS]}), flat)
    assert _read(SplitSpec(hf="parquet", hf_files=[str(nested)])) == PAIRS
    assert _read(SplitSpec(hf="parquet", hf_files=[str(flat)], hf_field=None)) == PAIRS


def test_hf_csv_language_columns(tmp_path: Path, hf_cache: Path):
    import csv

    path = tmp_path / "c.csv"
    rows = [("Hallo, Welt", "Hello, world"), ("Tab\there", "nbsp\u00a0there")]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["de", "en"])
        writer.writerows(rows)
    assert _read(SplitSpec(hf="csv", hf_files=[str(path)], hf_field=None)) == rows


def test_hf_newline_inside_a_sentence_becomes_a_space(tmp_path: Path, hf_cache: Path):
    """One pair must stay one line once written out (for SentencePiece and `nmt translate` files)."""
    path = _jsonl(tmp_path / "t.jsonl", [{"translation": {"de": "zwei\nZeilen", "en": "two lines"}}])
    assert _read(SplitSpec(hf="json", hf_files=[str(path)])) == [("zwei Zeilen", "two lines")]


def test_hf_missing_language_names_the_languages(tmp_path: Path, hf_cache: Path):
    path = _jsonl(tmp_path / "t.jsonl", [{"translation": {"fr": "a", "en": "b"}}])
    with pytest.raises(NMTError, match="'de' and 'en'"):
        _read(SplitSpec(hf="json", hf_files=[str(path)]))


def test_hf_missing_file(tmp_path: Path, hf_cache: Path):
    with pytest.raises(NMTError, match="file not found: .*nope.parquet"):
        _read(SplitSpec(hf="parquet", hf_files=[str(tmp_path / "nope.parquet")]))


def test_hf_malformed_file_names_it(tmp_path: Path, hf_cache: Path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"translation": {"de": "a", "en": "b"}}\n{not json\n')
    with pytest.raises(NMTError, match="broken.jsonl"):
        _read(SplitSpec(hf="json", hf_files=[str(path)]))


def test_hf_hub_id_without_network_is_a_user_error(hf_cache: Path):
    with pytest.raises(NMTError, match="cannot load dataset nmt-tests/no-such-dataset"):
        _read(SplitSpec(hf="nmt-tests/no-such-dataset", hf_config="de-en"))


# --- Cleaning ---


def test_cleaning_report_counts_each_reason():
    pairs = [("a b", "c d"), ("", "x"), ("y", ""), (" ".join("w" * 11), "z " * 11), ("a", "b c d e")]
    kept, report = clean_pairs(pairs, max_len=10, max_ratio=3.0)
    assert kept == [("a b", "c d")]
    assert report.kept == 1
    assert report.dropped == {"with an empty side": 2, "longer than 10 subwords": 1,
                              "with a length ratio over 3": 1}
    assert str(report).startswith("kept 1 of 5 pairs; dropped ")
    for part in ["2 with an empty side", "1 longer than 10 subwords", "1 with a length ratio over 3"]:
        assert part in str(report)


def test_cleaning_report_when_nothing_dropped():
    assert str(CleaningReport(kept=4)) == "kept all 4 pairs"


@given(
    lengths=st.lists(st.tuples(st.integers(0, 30), st.integers(0, 30)), max_size=40),
    max_len=st.integers(0, 25),
    max_ratio=st.sampled_from([0.0, 1.0, 1.5, 3.0]),
    drop_empty=st.booleans(),
)
def test_cleaning_keeps_exactly_the_pairs_within_limits(lengths, max_len, max_ratio, drop_empty):
    pairs = [(" ".join(["s"] * a), " ".join(["t"] * b)) for a, b in lengths]
    kept, report = clean_pairs(pairs, max_len, max_ratio, drop_empty)
    assert report.kept == len(kept) and report.kept + sum(report.dropped.values()) == len(pairs)
    expected = [
        (s, t) for (a, b), (s, t) in zip(lengths, pairs)
        if not (drop_empty and 0 in (a, b))
        and not (max_len and max(a, b) > max_len)
        and not (max_ratio and min(a, b) > 0 and max(a, b) > max_ratio * min(a, b))
    ]
    assert kept == expected
    assert all(keep_pair(len(s.split()), len(t.split()), max_len, max_ratio, drop_empty) is None for s, t in kept)


# --- Robustness: any bytes either read or raise NMTError ---

_GZIP_OF_TEXT = gzip.compress(b"hallo welt\n" * 50)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=300).map(lambda b: b"\x1f\x8b" + b),  # looks like gzip
    st.integers(0, len(_GZIP_OF_TEXT)).map(lambda n: _GZIP_OF_TEXT[:n]),  # truncated gzip
    st.tuples(st.integers(2, len(_GZIP_OF_TEXT) - 1), st.integers(1, 255)).map(  # one corrupted byte
        lambda p: _GZIP_OF_TEXT[: p[0]] + bytes([_GZIP_OF_TEXT[p[0]] ^ p[1]]) + _GZIP_OF_TEXT[p[0] + 1:]),
))
@example(data=_GZIP_OF_TEXT[:12] + bytes(b ^ 0xFF for b in _GZIP_OF_TEXT[12:30]) + _GZIP_OF_TEXT[30:])
def test_random_bytes_read_or_raise_nmt_error(tmp_path: Path, data: bytes):
    src, tgt = tmp_path / "fuzz.de", tmp_path / "fuzz.en"
    src.write_bytes(data)
    tgt.write_bytes(data)
    try:
        lines = list(read_lines(src))
    except NMTError:
        return
    assert all(isinstance(line, str) and "\n" not in line for line in lines)
    assert _read(SplitSpec(src=str(src), tgt=str(tgt))) == list(zip(lines, lines))


# --- The same mistakes through `nmt prepare`: exit code 2 and one line naming the problem ---


def test_cli_misaligned(run_cli, user_error, write_config, tmp_path: Path):
    src = _write(tmp_path / "mis.de", ["a b"] * 5)
    tgt = _write(tmp_path / "mis.en", ["c d"] * 4)
    path = write_config({"data": {"train": {"src": str(src), "tgt": str(tgt)}}})
    user_error(run_cli("prepare", path), str(src), str(tgt), "5 lines", "has 4")


def test_cli_invalid_utf8(run_cli, user_error, write_config, tmp_path: Path, tiny_corpus):
    lines = tiny_corpus.path("train", "de").read_bytes().split(b"\n")
    lines[6] += b" \xc3\x28"  # a truncated two-byte sequence on line 7
    src = tmp_path / "bad.de"
    src.write_bytes(b"\n".join(lines))
    path = write_config({"data": {"train": {"src": str(src)}}})
    user_error(run_cli("prepare", path), f"{src} line 7", "invalid UTF-8")


def test_cli_missing_corpus_file(run_cli, user_error, write_config, tmp_path: Path):
    path = write_config({"data": {"valid": {"src": str(tmp_path / "nope.de")}}})
    user_error(run_cli("prepare", path), "file not found", "nope.de")


def test_cli_tsv_too_few_columns(run_cli, user_error, write_config, tmp_path: Path):
    tsv = _write(tmp_path / "v.tsv", ["a\tb", "no tab"])
    path = write_config({"data": {"valid": {"src": None, "tgt": None, "tsv": str(tsv)}}})
    user_error(run_cli("prepare", path), "v.tsv line 2", "tab-separated")
