"""nmt.config: YAML onto dataclasses, overrides, and every way a config can be wrong."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

from nmt.config import (
    Config,
    DataConfig,
    SplitSpec,
    SubwordConfig,
    TrainConfig,
    expand_path,
    load_config,
    save_config,
    to_dict,
)
from nmt.errors import NMTError


def _sections() -> list[tuple[str, type]]:
    """Every dataclass reachable from Config, with its dotted prefix."""
    out, todo = [], [("", Config)]
    while todo:
        prefix, cls = todo.pop()
        out.append((prefix, cls))
        for f, tp in typing.get_type_hints(cls).items():
            if dataclasses.is_dataclass(tp):
                todo.append((f"{prefix}{f}.", tp))
    return out


ALL_KEYS = [prefix + f.name for prefix, cls in _sections() for f in dataclasses.fields(cls)]


def test_defaults_load_without_a_file():
    cfg = load_config(None)
    assert cfg == Config()
    assert isinstance(cfg.data, DataConfig) and isinstance(cfg.train, TrainConfig)
    assert isinstance(cfg.data.subword, SubwordConfig) and isinstance(cfg.data.train, SplitSpec)


def test_yaml_maps_onto_typed_dataclasses(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "exp_dir: exp/x\n"
        "data:\n  src_lang: fr\n  train: {tsv: a.tsv, src_column: 1, tgt_column: 0}\n"
        "  test:\n    t1: {src: a.fr, tgt: a.en}\n  subword: {vocab_size: 300, model_type: bpe}\n"
        "model: {cell: lstm}\n"
        "train: {lr: 1, betas: [0.9, 0.98]}\n"
    )
    cfg = load_config(path)
    assert cfg.exp_dir == "exp/x"
    assert cfg.data.src_lang == "fr" and cfg.data.tgt_lang == DataConfig().tgt_lang
    assert cfg.data.train == SplitSpec(tsv="a.tsv", src_column=1, tgt_column=0)
    assert cfg.data.test == {"t1": SplitSpec(src="a.fr", tgt="a.en")}
    assert (cfg.data.subword.vocab_size, cfg.data.subword.model_type) == (300, "bpe")
    assert cfg.model.cell == "lstm"
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)  # an int where a float goes is fine
    assert cfg.train.betas == [0.9, 0.98]


def test_empty_file_gives_defaults(tmp_path: Path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing here\n")
    assert load_config(path) == Config()


def test_saved_config_loads_back_identical(tmp_path: Path):
    cfg = load_config(None, ["train.lr=0.002", "model.cell=lstm", "data.test.t.src=a", "data.test.t.tgt=b"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


@pytest.mark.parametrize(
    "override, get, expected",
    [
        ("train.lr=0.002", lambda c: c.train.lr, 0.002),
        ("train.lr=1e-3", lambda c: c.train.lr, 0.001),  # YAML 1.1 reads this as a string
        ("data.subword.vocab_size=100", lambda c: c.data.subword.vocab_size, 100),
        ("data.subword.joint=false", lambda c: c.data.subword.joint, False),
        ("model.cell=lstm", lambda c: c.model.cell, "lstm"),
        ("train.betas=[0.8, 0.9]", lambda c: c.train.betas, [0.8, 0.9]),
        ("exp_dir=exp/a=b", lambda c: c.exp_dir, "exp/a=b"),  # only the first '=' separates
        ("data.test.foo.src=x.de", lambda c: c.data.test["foo"].src, "x.de"),
    ],
)
def test_override_sets_the_key(override, get, expected):
    assert get(load_config(None, [override])) == expected


def test_override_wins_over_the_file_and_keeps_the_rest(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("train: {lr: 0.5, max_tokens: 100}\ndata:\n  test:\n    a: {src: a.de, tgt: a.en}\n")
    cfg = load_config(path, ["train.lr=0.25", "data.test.b.src=b.de", "data.test.b.tgt=b.en"])
    assert cfg.train.lr == 0.25 and cfg.train.max_tokens == 100
    assert set(cfg.data.test) == {"a", "b"} and cfg.data.test["b"] == SplitSpec(src="b.de", tgt="b.en")


def test_override_into_an_empty_yaml_section(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  test:\n")
    assert load_config(path, ["data.test.t.src=x"]).data.test["t"].src == "x"


@pytest.mark.parametrize("key", ALL_KEYS)
def test_misspelt_key_names_it_and_suggests_the_right_one(key: str):
    """A doubled last letter (`train.lr` -> `train.lrr`) is the commonest typo; every key must survive it."""
    typo = key + key[-1]
    with pytest.raises(NMTError) as err:
        load_config(None, [f"{typo}=1"])
    message = str(err.value)
    assert f"unknown config key {typo}" in message
    assert f"did you mean {key}?" in message


def test_unknown_key_in_a_file_is_named(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lrr: 0.1\n")
    with pytest.raises(NMTError, match=r"unknown config key train\.lrr; did you mean train\.lr\?"):
        load_config(path)


def test_unknown_section_suggests_the_section():
    with pytest.raises(NMTError, match=r"unknown config key trian; did you mean train\?"):
        load_config(None, ["trian.lr=1"])


def test_unknown_key_with_nothing_close_has_no_suggestion():
    with pytest.raises(NMTError) as err:
        load_config(None, ["train.zzzzzzzz=1"])
    assert "train.zzzzzzzz" in str(err.value) and "did you mean" not in str(err.value)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.max_tokens=abc", "an integer"),
        ("train.max_tokens=1.5", "an integer"),
        ("train.max_tokens=true", "an integer"),  # bool is not an int here
        ("train.lr=fast", "a number"),
        ("train.lr=true", "a number"),
        ("train.tensorboard=1", "true or false"),
        ("model.cell=rnn", "one of 'gru', 'lstm'"),
        ("train.betas=0.9", "a list of a number"),
        ("data.train=3", "a mapping"),
        ("data.test=[a, b]", "a mapping"),
    ],
)
def test_wrong_type_names_key_and_expected_type(override: str, expected: str):
    key = override.split("=", 1)[0]
    with pytest.raises(NMTError) as err:
        load_config(None, [override])
    assert f"config key {key}" in str(err.value)
    assert expected in str(err.value)


def test_wrong_type_inside_a_list_names_the_item():
    with pytest.raises(NMTError, match=r"train\.betas\[1\]: expected a number"):
        load_config(None, ["train.betas=[0.9, x]"])


def test_override_without_equals_sign():
    with pytest.raises(NMTError, match="expected section.key=value"):
        load_config(None, ["train.lr"])


def test_bad_yaml_names_file_and_line(tmp_path: Path):
    path = tmp_path / "broken.yaml"
    path.write_text("train:\n  lr: 0.1\n bad: 2\nmodel: {}\n")
    with pytest.raises(NMTError) as err:
        load_config(path)
    assert str(path) in str(err.value) and "line 3" in str(err.value)


def test_config_that_is_not_a_mapping(tmp_path: Path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(NMTError, match="mapping"):
        load_config(path)


def test_missing_config_file(tmp_path: Path):
    with pytest.raises(NMTError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_env_var_expansion(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("NMT_DATA_DIR", "/data/here")
    assert expand_path("$NMT_DATA_DIR/multi30k/train.de.gz") == "/data/here/multi30k/train.de.gz"
    assert expand_path("${NMT_DATA_DIR}/x") == "/data/here/x"
    assert expand_path("no/vars") == "no/vars"


def test_unset_env_var_names_variable_and_key(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("NMT_TEST_UNSET", raising=False)
    with pytest.raises(NMTError) as err:
        expand_path("$NMT_TEST_UNSET/a.de", key="src")
    assert "NMT_TEST_UNSET" in str(err.value) and "src" in str(err.value)


def test_to_dict_is_plain_yaml():
    """The resolved config written beside an experiment must be plain YAML (no Python tags) that reads back as
    the same values, types included (safe_dump writes a tuple as a list, and safe_load reads a list)."""
    raw = to_dict(load_config(None, ["data.test.t.src=a", "train.betas=[0.8, 0.9]"]))
    text = yaml.safe_dump(raw)
    assert "!!python" not in text
    assert yaml.safe_load(text) == raw


# --- The same mistakes through the command line: exit code 2 and one line, never a traceback. ---


@pytest.mark.parametrize(
    "overrides, fragments",
    [
        (["train.lrr=0.1"], ["train.lrr", "did you mean train.lr?"]),
        (["train.max_tokens=abc"], ["train.max_tokens", "an integer"]),
        (["model.cell=rnn"], ["model.cell", "'gru'"]),
        (["train.lr"], ["section.key=value"]),
    ],
)
def test_cli_config_mistakes(run_cli, user_error, write_config, overrides, fragments):
    user_error(run_cli("prepare", write_config(), *overrides), *fragments)


def test_cli_unknown_key_in_file(run_cli, user_error, write_config):
    user_error(run_cli("prepare", write_config({"model": {"cel": "gru"}})), "model.cel", "did you mean model.cell?")


def test_cli_bad_yaml(run_cli, user_error, tmp_path: Path):
    path = tmp_path / "broken.yaml"
    path.write_text("data:\n  train: [a,\n")
    user_error(run_cli("prepare", path), str(path), "line 3", "not valid YAML")


def test_cli_missing_config(run_cli, user_error, tmp_path: Path):
    user_error(run_cli("prepare", tmp_path / "nope.yaml"), "config file not found", "nope.yaml")


def test_cli_unset_env_var(run_cli, user_error, write_config, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("NMT_TEST_UNSET", raising=False)
    path = write_config({"data": {"train": {"src": "$NMT_TEST_UNSET/train.de"}}})
    user_error(run_cli("prepare", path), "NMT_TEST_UNSET", "is not set")


def _bounded_keys() -> list[tuple[str, tuple]]:
    """(section.key, bounds) for every field declared with `bounded`, nested sections included."""
    found = []

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if "bounds" in f.metadata:
                found.append((f"{prefix}{f.name}", f.metadata["bounds"]))
            elif dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], f"{prefix}{f.name}.")

    walk(Config, "")
    return found


def _out_of_range(bounds: tuple) -> float:
    low, high, above, below = bounds
    if low is not None:
        return low - 1
    if above is not None:
        return above
    return (high if high is not None else below) + 1


@pytest.mark.parametrize("key, bounds", _bounded_keys(), ids=[k for k, _ in _bounded_keys()])
def test_every_bounded_key_out_of_range_is_named_at_load(key: str, bounds: tuple) -> None:
    """A value out of a key's range is a user error naming the key, whichever section it is in; its default
    is within the range."""
    value = _out_of_range(bounds)
    with pytest.raises(NMTError, match=f"^config key {key}: must be "):
        load_config(None, [f"{key}={value}"])
    load_config(None, [])  # defaults are in range


def test_bounds_cover_the_keys_a_typo_would_break() -> None:
    assert {"train.lr", "train.max_tokens", "decode.beam", "decode.alpha", "decode.batch_tokens",
            "decode.max_len_a", "decode.nbest", "decode.temperature", "model.dropout"} <= dict(_bounded_keys()).keys()
