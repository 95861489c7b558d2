"""Small queries the recipe scripts need and bash does badly: read a config, check a corpus, rank checkpoints,
tell whether test results are current, summarise a run. Called by recipes/common/lib.sh; not part of the library.

    python recipes/common/recipe.py get CONFIG KEY [OVERRIDES...]
    python recipes/common/recipe.py check-data CONFIG [OVERRIDES...] [--marker FILE]
    python recipes/common/recipe.py files-present CONFIG [OVERRIDES...]
    python recipes/common/recipe.py fetch-parquet REPO HF_CONFIG OUT_DIR [--splits train validation test]
    python recipes/common/recipe.py best-checkpoints EXP K
    python recipes/common/recipe.py config-matches CONFIG CHECKPOINT [OVERRIDES...]
    python recipes/common/recipe.py results-current CONFIG CHECKPOINT [OVERRIDES...]
    python recipes/common/recipe.py summary CONFIG [OVERRIDES...] [--command "how the run was started"]

A user's mistake exits with code 2 and one line on stderr, as `nmt` does.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import subprocess
import sys
from pathlib import Path

from nmt.config import Config, SplitSpec, expand_path, load_config, to_dict
from nmt.errors import NMTError

log = logging.getLogger("recipe")


def get(cfg: Config, key: str) -> str:
    """The value at dotted `key`: a mapping prints its keys one per line, a list its items space-separated."""
    value: object = cfg
    for part in key.split("."):
        if dataclasses.is_dataclass(value) and part in {f.name for f in dataclasses.fields(value)}:
            value = getattr(value, part)
        elif isinstance(value, dict) and part in value:
            value = value[part]
        else:
            raise NMTError(f"config has no key {key}")
    if isinstance(value, dict) or dataclasses.is_dataclass(value):
        names = value.keys() if isinstance(value, dict) else [f.name for f in dataclasses.fields(value)]
        return "\n".join(names)
    if isinstance(value, list):
        return " ".join(map(str, value))
    if isinstance(value, bool):
        return str(value).lower()
    return "" if value is None else str(value)


def _splits(cfg: Config) -> list[tuple[str, SplitSpec]]:
    return [("train", cfg.data.train), ("valid", cfg.data.valid), *cfg.data.test.items()]


def _fingerprint(cfg: Config) -> str:
    """What the data check depends on: each split's description and its local files' sizes and times."""
    from nmt.data.corpus import describe_split, split_files

    parts = []
    for name, spec in _splits(cfg):
        files = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) if p.exists() else (str(p), None, None)
                 for p in split_files(spec)]
        parts.append([name, describe_split(spec), cfg.data.src_lang, cfg.data.tgt_lang, files])
    return json.dumps(parts)


def check_data(cfg: Config, marker: Path | None) -> None:
    """Read every split of the config once: files present, sides aligned, text decodable. A hub dataset is
    downloaded into the `datasets` cache here, so that stage 1 finds it there. With `marker`, a check whose
    inputs have not changed since the marker was written is skipped."""
    from nmt.data.corpus import describe_split, iter_pairs

    fingerprint = _fingerprint(cfg)
    if marker is not None and marker.is_file():
        lines = marker.read_text(encoding="utf-8").splitlines()
        if lines and lines[0] == fingerprint:
            log.info("data already checked (%s):", marker)
            print("\n".join(lines[1:]))
            return
    report = []
    for name, spec in _splits(cfg):
        pairs = sum(1 for _ in iter_pairs(spec, cfg.data.src_lang, cfg.data.tgt_lang))
        if pairs == 0:
            raise NMTError(f"{name} split ({describe_split(spec)}) is empty")
        report.append(f"{name}: {pairs} pairs ({describe_split(spec)})")
        print(report[-1], flush=True)
    if marker is not None:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("\n".join([fingerprint, *report]) + "\n", encoding="utf-8")


def missing_files(cfg: Config) -> list[Path]:
    """The local files that the config's splits name and that do not exist (a hub id names none)."""
    from nmt.data.corpus import split_files

    return [path for _, spec in _splits(cfg) for path in split_files(spec) if not path.is_file()]


def fetch_parquet(repo: str, hf_config: str, out_dir: Path, splits: list[str]) -> None:
    """Download the Hub's parquet export (`refs/convert/parquet`) of one dataset config as OUT/SPLIT.parquet.

    This reads datasets whose Hub repository still holds a loading script (which `datasets` >= 4 refuses to
    run), such as IWSLT/iwslt2017: the Hub converts every dataset to parquet on that branch.
    """
    import pyarrow.parquet as pq
    from huggingface_hub import HfApi, hf_hub_download

    revision = "refs/convert/parquet"
    try:
        files = HfApi().list_repo_files(repo, repo_type="dataset", revision=revision)
    except Exception as err:  # noqa: BLE001 - offline, unknown repo, proxy: all say the same to the user
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise NMTError(f"cannot list the parquet export of {repo} ({reason}); without network access, put "
                       f"{', '.join(f'{s}.parquet' for s in splits)} (the `translation` layout) in {out_dir} "
                       "by hand, or point the config's hf_files elsewhere") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    for split in splits:
        shards = sorted(f for f in files if f.startswith(f"{hf_config}/{split}/") and f.endswith(".parquet"))
        if not shards:
            raise NMTError(f"{repo} has no parquet files for config {hf_config!r}, split {split!r}")
        local = [hf_hub_download(repo, shard, repo_type="dataset", revision=revision) for shard in shards]
        target = out_dir / f"{split}.parquet"
        tmp = target.with_suffix(".tmp")
        with pq.ParquetWriter(tmp, pq.read_schema(local[0])) as writer:
            for path in local:
                writer.write_table(pq.read_table(path))
        tmp.replace(target)
        print(f"{split}: {pq.read_metadata(target).num_rows} rows -> {target}")


def _valid_scores(exp: Path) -> dict[int, float]:
    """update -> dev score (BLEU, or -loss when BLEU is off) from metrics.jsonl; a repeated update keeps the
    last record (a resumed run may validate the same update again)."""
    scores: dict[int, float] = {}
    path = exp / "metrics.jsonl"
    if not path.is_file():
        raise NMTError(f"{path} not found: has this experiment been trained?")
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if record.get("kind") == "valid":
            scores[int(record["update"])] = float(record["bleu"] if "bleu" in record else -record["loss"])
    return scores


def best_checkpoints(exp: Path, k: int) -> list[Path]:
    """The k kept best_u*.pt checkpoints with the highest dev score (newest first among equals)."""
    scores = _valid_scores(exp)
    kept = []
    for path in (exp / "checkpoints").glob("best_u*.pt"):
        update = int(path.stem.removeprefix("best_u"))
        if update in scores:
            kept.append((scores[update], update, path))
    kept.sort(key=lambda item: (-item[0], -item[1]))
    return [path for _, _, path in kept[:k]]


def _differences(a: object, b: object, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) | set(b))
        return [d for key in keys for d in _differences(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [prefix.rstrip(".")]


def config_differences(cfg: Config, checkpoint: Path) -> list[str]:
    """Config keys whose values differ between `cfg` and the config stored in `checkpoint`. Keys that do not
    change the trained model (where it lives, its test sets and how it decodes) are left out."""
    from nmt.checkpoint import load_checkpoint, stored_config

    stored = stored_config(load_checkpoint(checkpoint))
    ignored = ("exp_dir", "data.test", "decode")
    return [key for key in _differences(to_dict(cfg), stored)
            if not any(key == i or key.startswith(i + ".") for i in ignored)]


def results_current(cfg: Config, checkpoint: Path) -> bool:
    """True when EXP/results.json scores every test set with this checkpoint and beam and is newer than it."""
    path = Path(cfg.exp_dir) / "results.json"
    if not path.is_file() or path.stat().st_mtime < checkpoint.stat().st_mtime:
        return False
    results = json.loads(path.read_text(encoding="utf-8"))
    return all(name in results and Path(results[name].get("checkpoint", "")).resolve() == checkpoint.resolve()
               and results[name].get("beam") == cfg.decode.beam for name in cfg.data.test)


def _commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def summary(cfg: Config, command: str) -> str:
    """A markdown table of EXP/results.json with the training time, epochs and hardware, ready for a README."""
    exp = Path(cfg.exp_dir)
    path = exp / "results.json"
    if not path.is_file():
        raise NMTError(f"{path} not found: run the test stage first")
    results = json.loads(path.read_text(encoding="utf-8"))
    valid = [json.loads(line) for line in (exp / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
             if '"valid"' in line] if (exp / "metrics.jsonl").is_file() else []
    minutes = f"{valid[-1].get('train_minutes', '?')}" if valid else "?"
    epochs = f"{valid[-1].get('epoch', '?')}" if valid else "?"
    best_dev = max((r["bleu"] for r in valid if "bleu" in r), default=None)
    lines = [f"{cfg.data.src_lang}-{cfg.data.tgt_lang} ({exp}), commit {_commit()}: `{command}`", "",
             "| test set | BLEU | chrF | best dev BLEU | beam | epochs | train minutes | device | dtype |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for name in cfg.data.test:
        r = results.get(name)
        if r is None:
            lines.append(f"| {name} | missing | | | | | | | |")
            continue
        dev = f"{best_dev:.2f}" if best_dev is not None else "-"
        lines.append(f"| {name} | {r['bleu']:.2f} | {r['chrf']:.2f} | {dev} | {r['beam']} | {epochs} | {minutes} "
                     f"| {r['device']} | {r['dtype']} |")
    signatures = sorted({r["signature"]["bleu"] for r in results.values() if isinstance(r, dict)
                         and "signature" in r})
    lines += ["", *(f"BLEU signature: {s}" for s in signatures)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="recipe.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("get")
    p.add_argument("config")
    p.add_argument("key")
    p.add_argument("overrides", nargs="*")
    for name in ("check-data", "files-present", "summary"):
        p = sub.add_parser(name)
        p.add_argument("config")
        p.add_argument("overrides", nargs="*")
    p.add_argument("--command", dest="run_command", default=None,
                   help="the command that ran the recipe, for the table's caption")
    sub.choices["check-data"].add_argument("--marker", type=Path, default=None,
                                           help="skip when this file records a check of the same inputs")
    p = sub.add_parser("fetch-parquet")
    p.add_argument("repo")
    p.add_argument("hf_config")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--splits", nargs="+", default=["train", "validation", "test"])
    p = sub.add_parser("best-checkpoints")
    p.add_argument("exp", type=Path)
    p.add_argument("k", type=int)
    for name in ("config-matches", "results-current"):
        p = sub.add_parser(name)
        p.add_argument("config")
        p.add_argument("checkpoint", type=Path)
        p.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        cfg = load_config(args.config, args.overrides) if hasattr(args, "config") else None
        if args.command == "get":
            print(get(cfg, args.key))
        elif args.command == "check-data":
            check_data(cfg, args.marker)
        elif args.command == "files-present":
            missing = missing_files(cfg)
            if missing:
                print("\n".join(map(str, missing)))
                return 1
        elif args.command == "fetch-parquet":
            fetch_parquet(args.repo, args.hf_config, Path(expand_path(str(args.out_dir))), args.splits)
        elif args.command == "best-checkpoints":
            print("\n".join(map(str, best_checkpoints(args.exp, args.k))))
        elif args.command == "config-matches":
            differ = config_differences(cfg, args.checkpoint)
            if differ:
                print(", ".join(differ))
                return 1
        elif args.command == "results-current":
            return 0 if results_current(cfg, args.checkpoint) else 1
        elif args.command == "summary":
            text = summary(cfg, args.run_command or " ".join([args.config, *args.overrides]))
            (Path(cfg.exp_dir) / "results.md").write_text(text + "\n", encoding="utf-8")
            print(text)
    except NMTError as err:
        print(f"recipe.py {args.command}: error: " + " ".join(str(err).splitlines()), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
