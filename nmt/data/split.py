"""Seeded train/valid/test splits of a corpus that has none, grouped so that no key sentence crosses splits.

Corpora such as Tatoeba give one sentence several translations (118,964 es-en pairs share 102,904 English
lines). A split by pair would put "I'm hungry." in training with one Spanish translation and in test with
another, and the test score would reward memorisation. Here the pairs are grouped by one side (the key), the
groups are shuffled with a seeded generator, and whole groups are dealt to valid, test and then train, so a key
sentence occurs in exactly one split.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Sequence
from pathlib import Path

from nmt.config import SplitSpec, expand_path
from nmt.data.corpus import iter_pairs
from nmt.errors import NMTError
from nmt.outputs import atomic_output, check_outputs

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "valid", "test")
MANIFEST = "split.json"


def split_by_key(keys: Sequence[str], sizes: dict[str, int], seed: int, rest: str = "train") -> dict[str, list[int]]:
    """Deal the indices of `keys` into named splits so that equal keys always land in the same split.

    `sizes` gives the number of items (pairs, not groups) each named split receives, filled in the order given;
    every other item goes to `rest`. Groups are visited in a seeded random order; a group joins the first split
    that still has room for all of it, so a split is filled exactly unless the groups left cannot fill it (then
    it ends a little short: only at its very end, where the room left is smaller than a whole group). Indices in
    each split keep their corpus order.
    """
    if rest in sizes:
        raise ValueError(f"{rest!r} takes what the other splits leave; give it no size")
    for name, size in sizes.items():
        if size < 0:
            raise NMTError(f"split size of {name} must not be negative, got {size}")
    if sum(sizes.values()) > len(keys):
        raise NMTError(f"asked for {sum(sizes.values())} held-out pairs but the corpus has only {len(keys)}")
    groups: dict[str, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    order = list(groups.values())  # first-occurrence order: deterministic before the shuffle
    random.Random(seed).shuffle(order)
    room = dict(sizes)
    assigned: dict[str, list[int]] = {name: [] for name in [*sizes, rest]}
    for group in order:
        target = next((name for name in sizes if len(group) <= room[name]), rest)
        if target != rest:
            room[target] -= len(group)
        assigned[target].extend(group)
    return {name: sorted(indices) for name, indices in assigned.items()}


def _sha256(path: Path) -> str:
    if not path.is_file():
        raise NMTError(f"file not found: {path}")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def split_corpus(src: str, tgt: str, langs: tuple[str, str], key_lang: str, valid: int, test: int, seed: int,
                 out_dir: str | Path) -> dict:
    """Split the aligned files `src` and `tgt` (languages `langs`) by `key_lang` into
    OUT/{train,valid,test}.{lang} and OUT/split.json (settings, sizes, file hashes); returns the manifest.

    A second call with the same inputs and settings finds split.json and the files intact and does nothing.
    """
    src_lang, tgt_lang = langs
    if src_lang == tgt_lang:
        raise NMTError(f"the two languages must differ, got {src_lang!r} twice")
    if key_lang not in langs:
        raise NMTError(f"key language {key_lang!r} is not one of {src_lang!r}, {tgt_lang!r}")
    out = Path(out_dir)
    src, tgt = expand_path(src, "src"), expand_path(tgt, "tgt")
    settings = {"seed": seed, "key": key_lang, "langs": [src_lang, tgt_lang],
                "requested": {"valid": valid, "test": test},
                "inputs": {src_lang: _sha256(Path(src)), tgt_lang: _sha256(Path(tgt))}}
    manifest_path = out / MANIFEST
    if manifest_path.is_file():
        old = json.loads(manifest_path.read_text(encoding="utf-8"))
        if ({k: old.get(k) for k in settings} == settings
                and all((out / name).is_file() and _sha256(out / name) == digest
                        for name, digest in old.get("files", {}).items())):
            log.info("reusing the split in %s (same inputs, seed %d)", out, seed)
            return old

    outputs = [out / MANIFEST, *(out / f"{name}.{lang}" for name in SPLIT_NAMES for lang in langs)]
    check_outputs(outputs, [src, tgt])
    pairs = list(iter_pairs(SplitSpec(src=src, tgt=tgt), src_lang, tgt_lang))
    key_side = langs.index(key_lang)
    indices = split_by_key([pair[key_side] for pair in pairs], {"valid": valid, "test": test}, seed)
    if not indices["train"]:
        raise NMTError(f"valid ({valid}) and test ({test}) leave no training pairs of the {len(pairs)} in the corpus")
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    sizes: dict[str, dict[str, int]] = {}
    for name in SPLIT_NAMES:
        chosen = [pairs[i] for i in indices[name]]
        for side, lang in enumerate(langs):
            path = out / f"{name}.{lang}"
            with atomic_output(path) as f:
                f.writelines(pair[side] + "\n" for pair in chosen)
            files[path.name] = _sha256(path)
        sizes[name] = {"pairs": len(chosen), "keys": len({pair[key_side] for pair in chosen})}
        log.info("%s: %d pairs, %d distinct %s sentences", name, sizes[name]["pairs"], sizes[name]["keys"],
                 key_lang)
    for name in ("valid", "test"):
        if sizes[name]["pairs"] < settings["requested"][name]:
            log.warning("%s has %d pairs, %d asked for: the groups left were too large to fill it exactly",
                        name, sizes[name]["pairs"], settings["requested"][name])
    manifest = {**settings, "sizes": sizes, "files": files}
    with atomic_output(manifest_path) as f:
        f.write(json.dumps(manifest, indent=2) + "\n")
    return manifest
