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
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from nmt.errors import NMTError

# Decoding bounds: a search's work grows with the beam, and a beam of thousands on five short lines ran for minutes
# without a word. Wider beams rarely help an RNN model (Koehn and Knowles, 2017: BLEU falls beyond ~10-50).
MAX_BEAM = 256


def bounded(default: Any, low: float | None = None, high: float | None = None, above: float | None = None,
            below: float | None = None) -> Any:
    """A dataclass field whose value must lie in a range: [low, high], with `above`/`below` as open bounds.
    `check_bounds` reads the range back from the field's metadata."""
    return field(default=default, metadata={"bounds": (low, high, above, below)})


def _bound_problem(value: Any, bounds: tuple) -> str | None:
    low, high, above, below = bounds
    if value is None:
        return None
    if low is not None and high is not None and not low <= value <= high:
        return f"must be between {low:g} and {high:g}"
    if low is not None and value < low:
        return f"must be at least {low:g}"
    if high is not None and value > high:
        return f"must be at most {high:g}"
    if above is not None and value <= above:
        return f"must be greater than {above:g}"
    if below is not None and value >= below:
        return f"must be less than {below:g}"
    return None


def check_bounds(section: Any, name_of: Callable[[str], str]) -> None:
    """Raise a user error naming the first field of dataclass `section` that is out of its `bounded` range."""
    for f in dataclasses.fields(section):
        bounds = f.metadata.get("bounds")
        problem = _bound_problem(getattr(section, f.name), bounds) if bounds else None
        if problem:
            raise NMTError(f"{name_of(f.name)} {problem}, got {getattr(section, f.name)!r}")


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
    vocab_size: int = bounded(8000, low=8)
    character_coverage: float = bounded(1.0, above=0.0, high=1.0)
    max_sentences: int = bounded(2_000_000, low=1)


@dataclass
class DataConfig:
    src_lang: str = "de"
    tgt_lang: str = "en"
    train: SplitSpec = field(default_factory=SplitSpec)
    valid: SplitSpec = field(default_factory=SplitSpec)
    test: dict[str, SplitSpec] = field(default_factory=dict)
    subword: SubwordConfig = field(default_factory=SubwordConfig)
    # Cleaning, applied to the training split only, on subword lengths.
    max_len: int = bounded(100, low=0)
    max_len_ratio: float = bounded(3.0, low=0.0)
    drop_empty: bool = True


@dataclass
class ModelConfig:
    emb_dim: int = bounded(256, low=1)
    enc_hidden: int = bounded(256, low=1)  # per direction
    enc_layers: int = bounded(1, low=1)
    dec_hidden: int = bounded(512, low=1)
    dec_layers: int = bounded(1, low=1)
    cell: Literal["gru", "lstm"] = "gru"
    attention: Literal["none", "bahdanau", "dot", "general"] = "bahdanau"
    attention_dim: int = bounded(256, low=1)
    input_feeding: bool = True
    bridge: Literal["zero", "final", "mean"] = "final"
    dropout: float = bounded(0.3, low=0.0, below=1.0)
    emb_dropout: float = bounded(0.3, low=0.0, below=1.0)
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
    threads: int = bounded(0, low=0)  # 0: leave torch's default
    max_tokens: int = bounded(4096, low=1)
    valid_max_tokens: int = bounded(8192, low=1)
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = bounded(1e-3, low=0.0)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = bounded(0.0, low=0.0)
    schedule: Literal["constant", "inverse_sqrt", "plateau"] = "constant"
    warmup_updates: int = bounded(0, low=0)
    plateau_factor: float = bounded(0.5, above=0.0, below=1.0)
    plateau_patience: int = bounded(1, low=0)
    min_lr: float = bounded(1e-5, low=0.0)
    clip_norm: float = bounded(1.0, low=0.0)  # 0: no clipping
    accum_steps: int = bounded(1, low=1)
    label_smoothing: float = bounded(0.1, low=0.0, below=1.0)
    tf_ratio: float = bounded(1.0, low=0.0, high=1.0)
    tf_schedule: Literal["constant", "linear", "inverse_sigmoid"] = "constant"
    tf_min: float = bounded(0.0, low=0.0, high=1.0)
    tf_decay_updates: int = bounded(10000, low=0)
    max_epochs: int = bounded(20, low=0)
    max_updates: int = bounded(0, low=0)  # 0: no limit
    max_minutes: float = bounded(0.0, low=0.0)  # 0: no limit; like fairseq's --stop-time-hours
    valid_every: int = bounded(0, low=0)  # 0: at the end of every epoch
    valid_bleu: bool = True
    early_stop_patience: int = bounded(0, low=0)  # validations without a better dev BLEU; 0: never stop early
    stop_at_bleu: float = bounded(0.0, low=0.0)  # stop once dev BLEU reaches this (0: never), e.g. to time a model
    keep_best: int = bounded(3, low=0)
    keep_last: int = bounded(1, low=0)
    average_best: int = bounded(0, low=0)  # final.pt = average of the best k checkpoints (0 or 1: the best one)
    max_bad_updates: int = bounded(5, low=1)  # non-finite losses in a row before the run stops
    log_every: int = bounded(50, low=1)
    tensorboard: bool = True


@dataclass
class DecodeConfig:
    """How sentences are decoded: bound once into a `nmt.search.Search`, never unpacked into arguments."""

    beam: int = bounded(5, low=1, high=MAX_BEAM)  # 1: greedy search
    alpha: float = bounded(1.0, low=0.0)
    length_penalty: Literal["none", "average", "gnmt"] = "average"
    coverage_penalty: float = bounded(0.0, low=0.0)
    # The longest output, in subwords without EOS: a * (source subwords + EOS) + b, within [min_len, 1024].
    max_len_a: float = bounded(1.5, low=0.0)
    max_len_b: int = 10
    min_len: int = bounded(1, low=0)
    batch_tokens: int = bounded(8000, low=1)
    nbest: int = bounded(1, low=1, high=MAX_BEAM)
    greedy_floor: bool = False  # also run greedy and keep its sentence where it beats the beam (~1/beam more work)
    # Sampling instead of search when `temperature` is set: `nbest` samples per sentence from the distribution
    # sharpened (< 1) or flattened (> 1), from the `topk` most likely tokens only when topk > 0, and from the
    # nucleus of mass `topp` only when topp < 1 (Holtzman et al., 2020).
    temperature: float | None = bounded(None, above=0.0)
    topk: int = bounded(0, low=0)
    topp: float = bounded(1.0, above=0.0, high=1.0)  # nucleus: the fewest most likely tokens holding this mass
    seed: int = 1  # of the sampling generator
    ordered_constraints: bool = False  # lexical constraints must appear in their given order


@dataclass
class Config:
    exp_dir: str = "exp/default"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)


OptionStyle = Literal["config", "cli", "api"]


def option_namer(style: OptionStyle) -> Callable[[str], str]:
    """How an error names a decoding option: `config key decode.beam:`, `--beam` or `beam`."""
    if style == "cli":
        return lambda key: "--" + key.replace("_", "-")
    if style == "api":
        return lambda key: key
    return lambda key: f"config key decode.{key}:"


def check_decode(decode: DecodeConfig, name_of: Callable[[str], str]) -> None:
    """The rules between decoding options that no single field's range can state."""
    name = lambda key: name_of(key).rstrip(":")  # noqa: E731
    if decode.temperature is None and decode.nbest > decode.beam:
        raise NMTError(f"{name('nbest')} {decode.nbest} needs a beam of at least {decode.nbest} "
                       f"({name('beam')} is {decode.beam})")
    # The shortest non-empty source is one subword and EOS: a limit below 1 there would empty the output.
    if 2 * decode.max_len_a + decode.max_len_b < 1:
        raise NMTError(f"{name('max_len_a')} {decode.max_len_a:g} and {name('max_len_b')} {decode.max_len_b} "
                       "allow outputs shorter than one subword (a * (source length + 1) + b must be at least 1)")


def decode_options(base: DecodeConfig, changes: Mapping[str, Any], style: OptionStyle = "api") -> DecodeConfig:
    """`base` with a user's `changes` (None means "not given"), checked and named in the caller's terms.

    This is the one place of the rule that n-best widens the beam: asking for more hypotheses than the beam
    holds, without naming a beam, widens the beam to fit.
    """
    name_of = option_namer(style)
    label = "config key decode." if style == "config" else ""
    hints = typing.get_type_hints(DecodeConfig)
    given = {}
    for key, value in changes.items():
        if key not in hints:
            close = difflib.get_close_matches(key, list(hints), n=1, cutoff=0.5)
            hint = f"; did you mean {name_of(close[0]).rstrip(':')}?" if close else ""
            raise NMTError(f"unknown decoding option {name_of(key).rstrip(':')}{hint}")
        if value is not None:
            given[key] = _convert(value, hints[key], key if style != "cli" else name_of(key), label)
    decode = dataclasses.replace(base, **given)
    if "beam" not in given and decode.nbest > decode.beam:
        decode = dataclasses.replace(decode, beam=decode.nbest)
    check_bounds(decode, name_of)
    check_decode(decode, name_of)
    return decode


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


def _convert(value: Any, tp: Any, key: str, label: str = "config key ") -> Any:
    """Check `value` against the annotation `tp`, converting the harmless cases (int -> float). Errors name
    `label + key` (a config key, or a command-line option with an empty label)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _convert(value, option, key, label)
            except NMTError:
                continue
        raise NMTError(f"{label}{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise NMTError(f"{label}{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise NMTError(f"{label}{key}: expected {_type_name(tp)}, got {value!r}")
        (item_type,) = typing.get_args(tp)
        return [_convert(v, item_type, f"{key}[{i}]", label) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise NMTError(f"{label}{key}: expected a mapping, got {value!r}")
        _, value_type = typing.get_args(tp)
        return {str(k): _convert(v, value_type, f"{key}.{k}", label) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise NMTError(f"{label}{key}: expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=key)
    if tp is type(None):
        if value is None:
            return None
        raise NMTError(f"{label}{key}: expected null, got {value!r}")
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
    raise NMTError(f"{label}{key}: expected {_type_name(tp)}, got {value!r}")


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
    section = cls(**kwargs)
    check_bounds(section, lambda name: f"config key {prefix + '.' if prefix else ''}{name}:")
    if isinstance(section, DecodeConfig):
        check_decode(section, lambda name: f"config key {prefix + '.' if prefix else ''}{name}")
    return section


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
