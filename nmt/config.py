"""Typed configuration: YAML files mapped onto dataclasses, with strict keys and `section.key=value` overrides.

A config is the whole description of an experiment. Every key is checked against the dataclasses below, so a
misspelt key fails loudly (with the closest valid key suggested) instead of silently falling back to a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from nmt.errors import NMTError


@dataclass
class SplitSpec:
    """Where one split of a parallel corpus lives. Exactly one form is used:

    - `src` + `tgt`: two line-aligned plain-text files (`.gz` allowed);
    - `tsv`: one tab-separated file, source in column `src_column`, target in `tgt_column`;
    - `hf`: a Hugging Face `datasets` source: a hub id (with `hf_config` and `hf_split`) or a loader name
      (`parquet`, `json`, `csv`) with local `hf_files`. Sentences are read from `hf_field` (a dict keyed by
      language, the `translation` layout) or, when `hf_field` is empty, from columns named by the languages.
    """

    src: str | None = None
    tgt: str | None = None
    tsv: str | None = None
    src_column: int = 0
    tgt_column: int = 1
    hf: str | None = None
    hf_config: str | None = None
    hf_split: str = "train"
    hf_files: list[str] | None = None
    hf_field: str | None = "translation"


@dataclass
class SubwordConfig:
    joint: bool = True
    model_type: Literal["unigram", "bpe"] = "unigram"
    vocab_size: int = 8000
    character_coverage: float = 1.0
    max_sentences: int = 2_000_000


@dataclass
class DataConfig:
    src_lang: str = "de"
    tgt_lang: str = "en"
    train: SplitSpec = field(default_factory=SplitSpec)
    valid: SplitSpec = field(default_factory=SplitSpec)
    test: dict[str, SplitSpec] = field(default_factory=dict)
    subword: SubwordConfig = field(default_factory=SubwordConfig)
    # Cleaning, applied to the training split only, on subword lengths.
    max_len: int = 100
    max_len_ratio: float = 3.0
    drop_empty: bool = True


@dataclass
class ModelConfig:
    emb_dim: int = 256
    enc_hidden: int = 256  # per direction
    enc_layers: int = 1
    dec_hidden: int = 512
    dec_layers: int = 1
    cell: Literal["gru", "lstm"] = "gru"
    attention: Literal["none", "bahdanau", "dot", "general"] = "bahdanau"
    attention_dim: int = 256
    input_feeding: bool = True
    bridge: Literal["zero", "final", "mean"] = "final"
    dropout: float = 0.3
    emb_dropout: float = 0.3
    # none: separate matrices; decoder: decoder input with output; all: also the encoder (joint vocab only).
    tie_embeddings: Literal["none", "decoder", "all"] = "none"
    # Multiply embedding lookups by sqrt(emb_dim) (Vaswani et al., 2017): see nmt/model/seq2seq.py. False is the
    # behaviour of checkpoints made before this option existed.
    scale_embeddings: bool = True


@dataclass
class TrainConfig:
    seed: int = 1
    device: str = "auto"
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    threads: int = 0  # 0: leave torch's default
    max_tokens: int = 4096
    valid_max_tokens: int = 8192
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    schedule: Literal["constant", "inverse_sqrt", "plateau"] = "constant"
    warmup_updates: int = 0
    plateau_factor: float = 0.5
    plateau_patience: int = 1
    min_lr: float = 1e-5
    clip_norm: float = 1.0
    accum_steps: int = 1
    label_smoothing: float = 0.1
    tf_ratio: float = 1.0
    tf_schedule: Literal["constant", "linear", "inverse_sigmoid"] = "constant"
    tf_min: float = 0.0
    tf_decay_updates: int = 10000
    max_epochs: int = 20
    max_updates: int = 0  # 0: no limit
    max_minutes: float = 0.0  # 0: no limit; like fairseq's --stop-time-hours
    valid_every: int = 0  # 0: at the end of every epoch
    valid_bleu: bool = True
    early_stop_patience: int = 0  # validations without a better dev BLEU; 0: never stop early
    stop_at_bleu: float = 0.0  # stop once dev BLEU reaches this (0: never), e.g. to time a model of known quality
    keep_best: int = 3
    keep_last: int = 1
    average_best: int = 0  # final.pt = average of the best k checkpoints (0 or 1: the best one)
    max_bad_updates: int = 5  # non-finite losses in a row before the run stops
    log_every: int = 50
    tensorboard: bool = True


@dataclass
class DecodeConfig:
    beam: int = 5
    alpha: float = 1.0
    length_penalty: Literal["none", "average", "gnmt"] = "average"
    coverage_penalty: float = 0.0
    max_len_a: float = 1.5
    max_len_b: int = 10
    min_len: int = 1
    batch_tokens: int = 8000
    nbest: int = 1
    greedy_floor: bool = False  # also run greedy and keep its sentence where it beats the beam (~1/beam more work)


@dataclass
class Config:
    exp_dir: str = "exp/default"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)


_ENV_VAR = re.compile(r"\$\{?(\w+)\}?")
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def expand_path(path: str, key: str = "path") -> str:
    """Expand `~` and `$VAR`; an unset variable is the user's mistake, named with its key."""

    def substitute(match: re.Match) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise NMTError(f"{key}: environment variable {name} is not set (used in {path!r})")
        return os.environ[name]

    return os.path.expanduser(_ENV_VAR.sub(substitute, path))


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null"}.get(
        tp, str(tp)
    )


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting the harmless cases (int -> float)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _convert(value, option, key)
            except NMTError:
                continue
        raise NMTError(f"config key {key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise NMTError(f"config key {key}: expected {_type_name(tp)}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise NMTError(f"config key {key}: expected {_type_name(tp)}, got {value!r}")
        (item_type,) = typing.get_args(tp)
        return [_convert(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise NMTError(f"config key {key}: expected a mapping, got {value!r}")
        _, value_type = typing.get_args(tp)
        return {str(k): _convert(v, value_type, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise NMTError(f"config key {key}: expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=key)
    if tp is type(None):
        if value is None:
            return None
        raise NMTError(f"config key {key}: expected null, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads `1e-3` (no dot) as a string
    elif tp is str:
        if isinstance(value, str):
            return value
    raise NMTError(f"config key {key}: expected {_type_name(tp)}, got {value!r}")


def _unknown_key(cls: type, key: str, prefix: str) -> NMTError:
    names = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
    where = f"{prefix}.{key}" if prefix else key
    hint = f"; did you mean {(prefix + '.' if prefix else '') + close[0]}?" if close else ""
    return NMTError(f"unknown config key {where}{hint}")


def from_dict(cls: type, values: dict, prefix: str = "") -> Any:
    """Build dataclass `cls` from a plain dict, rejecting unknown keys and wrong types."""
    if not isinstance(values, dict):
        raise NMTError(f"config {prefix or 'file'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise _unknown_key(cls, str(key), prefix)
        full = f"{prefix}.{key}" if prefix else key
        kwargs[key] = _convert(value, hints[key], full)
    return cls(**kwargs)


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def apply_override(raw: dict, override: str) -> None:
    """Apply one `section.key=value` override to a raw config dict; the value is parsed as YAML."""
    if "=" not in override:
        raise NMTError(f"override {override!r}: expected section.key=value")
    dotted, text = override.split("=", 1)
    try:
        value = yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        value = text
    parts = dotted.strip().split(".")
    node = raw
    cls: Any = Config
    for i, part in enumerate(parts[:-1]):
        prefix = ".".join(parts[:i])
        if typing.get_origin(cls) is dict:
            cls = typing.get_args(cls)[1]  # `part` is a free key (e.g. a test set's name)
        elif dataclasses.is_dataclass(cls):
            if part not in {f.name for f in dataclasses.fields(cls)}:
                raise _unknown_key(cls, part, prefix)
            cls = typing.get_type_hints(cls)[part]
        else:
            cls = None
        if node.get(part) is None:  # absent, or an empty YAML section (`test:`)
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise NMTError(f"override {override!r}: {'.'.join(parts[: i + 1])} is not a section")
    node[parts[-1]] = value


def load_config(path: str | os.PathLike | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config (or start from defaults when `path` is None) and apply overrides."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise NMTError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
            mark = getattr(err, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            raise NMTError(f"{path}{where}: not valid YAML ({first_line})") from None
        if not isinstance(raw, dict):
            raise NMTError(f"{path}: a config must be a mapping of sections")
    for override in overrides:
        apply_override(raw, override)
    return from_dict(Config, raw)


def config_from_dict(values: dict) -> Config:
    return from_dict(Config, values)


def save_config(config: Config, path: str | os.PathLike) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False), encoding="utf-8")
