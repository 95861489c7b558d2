"""`nmt prepare`: SentencePiece models and encoded splits in the experiment folder, reused when unchanged.

Cache keys are content hashes: of the training files and subword settings for the SentencePiece models, and
of each split's files, the models' bytes and the cleaning settings for the encoded arrays. Editing any of them
rebuilds exactly what depends on it.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from nmt.config import Config, SplitSpec
from nmt.data.batching import make_batches, padding_efficiency
from nmt.data.cache import EncodedCorpus, encode_pairs, hash_bytes, hash_files
from nmt.data.corpus import describe_split, iter_pairs, split_files
from nmt.data.subword import Subword, train_subword
from nmt.errors import NMTError

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    src_model: Subword
    tgt_model: Subword
    train: EncodedCorpus
    valid: EncodedCorpus
    efficiency: float
    seconds: float


def _split_key(spec: SplitSpec, extra: str) -> str:
    return hash_files(split_files(spec), describe_split(spec) + extra)


def _subword_models(cfg: Config, exp: Path) -> tuple[Subword, Subword]:
    data = cfg.data
    folder = exp / "spm"
    folder.mkdir(parents=True, exist_ok=True)
    key = _split_key(data.train, json.dumps(asdict(data.subword), sort_keys=True) + data.src_lang + data.tgt_lang)
    key_file = folder / "key"
    names = ["joint"] if data.subword.joint else [data.src_lang, data.tgt_lang]
    paths = [folder / f"{name}.model" for name in names]
    if key_file.exists() and key_file.read_text() == key and all(p.exists() for p in paths):
        models = [Subword.load(str(p)) for p in paths]
        log.info("reusing SentencePiece model(s) in %s", folder)
    else:
        started = time.time()
        pairs = lambda: iter_pairs(data.train, data.src_lang, data.tgt_lang, "data.train")  # noqa: E731
        if data.subword.joint:
            sides = [itertools.chain.from_iterable(pairs())]
        else:
            sides = [(s for s, _ in pairs()), (t for _, t in pairs())]
        models = []
        for path, sentences in zip(paths, sides):
            try:
                blob = train_subword(sentences, data.subword)
            except NMTError as err:
                raise NMTError(f"data.train ({describe_split(data.train)}): {err}") from None
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(blob)
            tmp.replace(path)
            models.append(Subword(blob))
        key_file.write_text(key)
        log.info("trained SentencePiece model(s) %s in %.1fs", ", ".join(map(str, paths)), time.time() - started)
    return (models[0], models[0]) if data.subword.joint else (models[0], models[1])


def encode_split(
    cfg: Config, exp: Path, name: str, spec: SplitSpec, src_model: Subword, tgt_model: Subword, clean: bool
) -> EncodedCorpus:
    """Load split `name` from the cache, or encode it and store it there."""
    data = cfg.data
    cleaning = (data.max_len, data.max_len_ratio, data.drop_empty) if clean else None
    key = _split_key(spec, hash_bytes(src_model.model_bytes, tgt_model.model_bytes) + repr(cleaning))
    path = exp / "cache" / f"{name}.{key}.npz"
    if path.exists():
        log.info("reusing encoded %s: %s", name, path)
        return EncodedCorpus.load(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f"{name}.*.npz"):
        stale.unlink()
    corpus, report = encode_pairs(iter_pairs(spec, data.src_lang, data.tgt_lang, f"data.{name}"), src_model,
                                  tgt_model, cleaning)
    if len(corpus) == 0:
        raise NMTError(f"{name} split ({describe_split(spec)}) has no usable sentence pairs ({report})")
    log.info("%s: %s", name, report)
    corpus.save(path)
    return corpus


def prepare(cfg: Config) -> PreparedData:
    started = time.time()
    exp = Path(cfg.exp_dir)
    exp.mkdir(parents=True, exist_ok=True)
    src_model, tgt_model = _subword_models(cfg, exp)
    train = encode_split(cfg, exp, "train", cfg.data.train, src_model, tgt_model, clean=True)
    valid = encode_split(cfg, exp, "valid", cfg.data.valid, src_model, tgt_model, clean=False)
    # +1: the model appends eos to the source and bos/eos to the target.
    src_len, tgt_len = train.src_lengths + 1, train.tgt_lengths + 1
    batches = make_batches(src_len, tgt_len, cfg.train.max_tokens, seed=cfg.train.seed)
    efficiency = padding_efficiency(batches, src_len, tgt_len)
    return PreparedData(src_model, tgt_model, train, valid, efficiency, time.time() - started)
