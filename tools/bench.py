"""Side-by-side speed benchmark of nmt against Joey NMT 2.3.0 (the peer), on the same data, subwords and model.

    python tools/bench.py            # the full benchmark (the first run also fills --cache: see docs/BENCHMARKS.md)
    python tools/bench.py --quick    # fewer timed updates, half of test2016; reuses the cached models
    python tools/bench.py --skip-peer --quick    # ours alone

What it measures, each system in processes of its own (so that peak memory is per process):
  - the machine's fp32 and bf16 matrix-product rates (GFLOP/s), a few shapes typical of the model;
  - training: real (non-padding) target tokens per second over a fixed number of updates after warm-up, the real
    target tokens per update (Joey's token batch size is raised until it matches ours), seconds per epoch
    (the epoch's target tokens over that rate), peak resident memory;
  - decoding test2016, greedy and beam 5: sentences per second with each system's BLEU and mean output length,
    on models the bench trained to a dev BLEU of at least --target-bleu, kept in --cache for later runs;
  - the fraction of the faster matrix-product rate that our training and beam-5 decoding reach, counting the
    model's FLOPs with `nmt.model.flops.ModelFlops`.
Ours runs in fp32 and with dtype auto (bf16 where the CPU multiplies bf16 fast); bf16 counts as the headline only
where its dev BLEU stays within 0.3 of fp32's. The last line printed is one JSON object with every figure.

This file is the driver: it parses the options, prepares the data (`bench_setup.py`), runs every measurement in
a worker process of its own, and prints (`bench_report.py`). Our workers are `bench_ours.py`, run under this
Python; the peer's are `bench_peer.py`, run under the peer's own virtual environment in the cache (torch 2.13.0,
joeynmt 2.3.0, sentencepiece<0.2, importlib_metadata), which imports nothing from nmt.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

TOOLS = Path(__file__).resolve().parent
REPO = TOOLS.parent
sys.path.insert(0, str(REPO))  # this checkout's nmt, whatever is installed

from nmt.errors import NMTError  # noqa: E402
from nmt.model.flops import GATES, ModelFlops  # noqa: E402

from bench_report import Machine, Peak, bleu, mean, mean_words, report_models, summarize, who  # noqa: E402
from bench_setup import (PEER, SPLITS, SRC, TGT, VOCAB, Data, Settings, bench_model, decompress,  # noqa: E402
                         ensure_peer, joey_batches, joey_config, match_joey_batch_size, nmt_config, prepare_data,
                         write_yaml)

log = logging.getLogger("bench")

OURS = TOOLS / "bench_ours.py"  # run under this Python
THEIRS = TOOLS / "bench_peer.py"  # run under the peer's venv


def parse_args(argv: list[str]) -> Settings:
    p = argparse.ArgumentParser(prog="tools/bench.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="10 timed updates after 2 warm-up, 500 test sentences; models as in the full run (cached)")
    p.add_argument("--cache", default=str(REPO / ".bench_cache"),
                   help="folder for the peer's venv, the prepared data and the trained models (default: "
                   ".bench_cache/ in the repository)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    p.add_argument("--threads", type=int, default=2, help="torch threads for every process (default: 2)")
    p.add_argument("--skip-peer", action="store_true", help="measure ours only (no Joey NMT install or runs)")
    p.add_argument("--warmup-updates", type=int, default=None, help="untimed updates first (default 5; quick 2)")
    p.add_argument("--updates", type=int, default=None, help="timed training updates (default 40; quick 10)")
    p.add_argument("--decode-sentences", type=int, default=None,
                   help="first N sentences of test2016 to decode (default: all 1000; quick 500)")
    p.add_argument("--dev-sentences", type=int, default=0,
                   help="first N sentences of valid for the dev BLEU during model training (default: all)")
    p.add_argument("--decode-batch-tokens", type=int, default=8000,
                   help="decoding batch size in tokens, both systems (default: 8000)")
    p.add_argument("--target-bleu", type=float, default=10.0,
                   help="train the decoding models until dev BLEU (greedy) reaches this (default: 10)")
    p.add_argument("--max-model-updates", type=int, default=3000,
                   help="give up on --target-bleu after this many updates (default: 3000)")
    p.add_argument("--model-updates", type=int, default=0,
                   help="smoke tests: train the decoding models for exactly N updates instead, with no BLEU "
                   "target (cached separately; their decoding speeds are not those of translating models)")
    p.add_argument("--valid-every", type=int, default=100, help="updates between dev BLEU checks (default: 100)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s bench %(levelname)s %(message)s", datefmt="%H:%M:%S")
    data_dir = Path(os.environ.get("NMT_DATA_DIR") or REPO.parent / "shared" / "data")
    for split in SPLITS:
        for lang in (SRC, TGT):
            if not (data_dir / "multi30k" / f"{split}.{lang}.gz").is_file():
                p.error(f"{data_dir}/multi30k/{split}.{lang}.gz not found: set NMT_DATA_DIR to the folder that "
                        "holds multi30k/")
    for name in ("threads", "decode_batch_tokens", "valid_every", "max_model_updates"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if a.model_updates < 0 or a.dev_sentences < 0:
        p.error("--model-updates and --dev-sentences must not be negative")
    if a.target_bleu <= 0:  # train.stop_at_bleu 0 means "never stop"
        p.error("--target-bleu must be greater than 0")
    warmup = a.warmup_updates if a.warmup_updates is not None else (2 if a.quick else 5)
    updates = a.updates if a.updates is not None else (10 if a.quick else 40)
    if updates < 1 or warmup < 0:
        p.error("--updates must be at least 1 and --warmup-updates not negative")
    decode = a.decode_sentences if a.decode_sentences is not None else (500 if a.quick else 0)
    return Settings(cache=Path(a.cache).resolve(), data_dir=data_dir.resolve(), quick=a.quick, device=a.device,
                    threads=a.threads, skip_peer=a.skip_peer, warmup_updates=warmup, updates=updates,
                    decode_sentences=decode, dev_sentences=a.dev_sentences, decode_batch_tokens=a.decode_batch_tokens,
                    target_bleu=a.target_bleu, max_model_updates=a.max_model_updates, model_updates=a.model_updates,
                    valid_every=a.valid_every, peak_seconds=0.3 if a.quick else 1.0)


# ----------------------------------------------------------------------------------------------- processes


def _thread_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    return env


def run_worker(script: Path, kind: str, spec: dict, workdir: Path, threads: int,
               python: Path | str = sys.executable) -> dict:
    """Run worker `kind` of `script` (`OURS` or `THEIRS`) in a process of its own, under `python` (which picks
    the environment); returns the JSON it writes (`bench_common.worker_main`).

    The worker's stdout goes to our stderr: Joey NMT logs to stdout, and our stdout is for the figures.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    spec_path, out_path = workdir / f"{kind}.spec.json", workdir / f"{kind}.out.json"
    spec_path.write_text(json.dumps(spec, indent=1))
    out_path.unlink(missing_ok=True)
    log.info("running %s (%s %s)", kind, python, script.name)
    started = time.time()
    code = subprocess.run([str(python), str(script), kind, str(spec_path), str(out_path)],
                          stdout=sys.stderr, env=_thread_env(threads), cwd=REPO).returncode
    if code != 0 or not out_path.exists():
        raise SystemExit(f"bench: {kind} failed (exit code {code}); its log is above")
    result = json.loads(out_path.read_text())
    log.info("%s done in %.0fs", kind, time.time() - started)
    return result


def _stable_hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:12]


# ----------------------------------------------------------------------------------------------- the bench


def _copy_prepared(data: Data, exp: Path) -> None:
    """Give a new experiment folder the prepared SentencePiece model and arrays, so nmt reuses them (its cache
    keys are content hashes) instead of training another SentencePiece model."""
    for name in ("spm", "cache"):
        if not (exp / name).exists():
            shutil.copytree(data.prep_exp / name, exp / name)


def model_rule(s: Settings, data: Data) -> dict:
    """What makes a decoding model the one a run asks for, apart from its config (the cache keys hash both)."""
    fixed = s.model_updates or None
    valid_every = fixed or s.valid_every
    cap = fixed or s.valid_every * math.ceil(s.max_model_updates / s.valid_every)
    return {"target_bleu": None if fixed else s.target_bleu, "updates": cap, "valid_every": valid_every,
            "dev_sentences": s.dev_sentences, "spm": hashlib.sha256(data.spm_model.read_bytes()).hexdigest()}


def train_our_models(s: Settings, data: Data, dtypes: list[str]) -> dict[str, dict]:
    """Our decoding models, trained once and cached: fp32 to the dev BLEU target (or --model-updates), each
    other dtype for as many updates as fp32 took."""
    rule = model_rule(s, data)
    models: dict[str, dict] = {}
    for dtype in dtypes:
        updates = rule["updates"] if dtype == "fp32" else models["fp32"]["updates"]
        target = rule["target_bleu"] if dtype == "fp32" else None
        train = {"max_updates": updates, "max_epochs": 10_000, "valid_every": rule["valid_every"]}
        recipe = nmt_config(s, Path("."), data, dtype, **train)
        for where in ("device", "threads"):  # a model trained on one device decodes on another
            del recipe["train"][where]
        identity = {"system": "nmt", "dtype": dtype, "config": recipe, **rule, "updates": updates,
                    "target_bleu": target}
        exp = s.cache / "models" / f"nmt-{dtype}-{_stable_hash(identity)}"
        done = exp / "bench-done.json"
        if not done.exists():
            log.info("training our %s model into %s (%s)", dtype, exp,
                     f"until dev BLEU >= {target}, at most {updates} updates" if target is not None
                     else f"{updates} updates")
            exp.mkdir(parents=True, exist_ok=True)
            _copy_prepared(data, exp)
            # The target is in the identity already (target_bleu); 0 is "never stop".
            config = write_yaml(nmt_config(s, exp, data, dtype, **train, stop_at_bleu=target or 0.0),
                                exp / "bench.yaml")
            result = run_worker(OURS, "ours_model", {"config": str(config), "threads": s.threads}, exp, s.threads)
            done.write_text(json.dumps(result, indent=1))
            shutil.rmtree(exp / "checkpoints")  # final.pt decodes; the training states are 300 MB
        else:
            log.info("reusing our %s model in %s", dtype, exp)
        models[dtype] = json.loads(done.read_text())
    return models


def train_peer_model(s: Settings, data: Data, peer_python: Path, peer_batch_size: int) -> dict:
    """The peer's decoding model, trained once to the same target as ours and cached."""
    rule = model_rule(s, data)
    cap, valid_every = rule["updates"], rule["valid_every"]
    # What is decoded later does not change the model: the identity names the whole test set, so that
    # --quick (500 test sentences) reuses the full run's model.
    recipe = joey_config(s, data, Path("."), peer_batch_size, cap, valid_every, data.plain / "test2016")
    del recipe["use_cuda"]
    identity = {"system": "joey", **rule, "config": recipe}
    model_dir = s.cache / "models" / f"joey-{_stable_hash(identity)}"
    done = model_dir.with_name(model_dir.name + ".bench-done.json")  # Joey's model_dir is wiped on start
    if not done.exists():
        log.info("training %s's model into %s", PEER, model_dir)
        config = write_yaml(joey_config(s, data, model_dir, peer_batch_size, cap, valid_every),
                            model_dir.with_name(model_dir.name + ".yaml"))
        result = run_worker(THEIRS, "joey_model", {"config": str(config), "threads": s.threads, "device": s.device,
                                                   "target_bleu": rule["target_bleu"]},
                            s.cache / "runs", s.threads, peer_python)
        result["config"] = str(config)
        done.write_text(json.dumps(result, indent=1))
    else:
        log.info("reusing %s's model in %s", PEER, model_dir)
    return json.loads(done.read_text())


def measure_peak(s: Settings, machine: Machine) -> Peak:
    """Matrix products of the model's typical shapes: a decoder step's GRU input projection (batch 128), the
    vocabulary projection of a decoding batch (1024 rows) and of a training batch (4096 target tokens); then a
    large square product, what the machine does at its best. The fractions of peak divide by the best of all."""
    m = bench_model()
    shapes = [[128, m.emb_dim + m.dec_hidden, GATES[m.cell] * m.dec_hidden], [1024, m.dec_hidden, VOCAB],
              [4096, m.dec_hidden, VOCAB], [2048, 2048, 2048]]
    result = run_worker(OURS, "peak", {"device": s.device, "threads": s.threads, "shapes": shapes,
                                                 "seconds": s.peak_seconds}, s.cache / "runs", s.threads)
    rates = {"fp32": 0.0, "bf16": 0.0}
    print("matrix products, GFLOP/s (2 per multiply-add):")
    for r in result["products"]:
        m, k, n = r["shape"]
        rates[r["dtype"]] = max(rates[r["dtype"]], r["gflops"])
        note = f"  ({r['note']})" if "note" in r else ""
        print(f"  ({m}x{k})@({k}x{n}) {r['dtype']}: {r['gflops']:8.1f}{note}  {machine.tag(r['dtype'])}")
    peak = Peak(rates)
    print(f"  best: {peak.best:.1f} GFLOP/s ({peak.dtype})  {machine.tag(peak.dtype)}")
    return peak


def measure_training(s: Settings, machine: Machine, data: Data, dtypes: list[str], peer_python: Path | None,
                     peer_batch_size: int, train_flops: float) -> dict[str, dict]:
    """Training speed of ours in each dtype and of the peer, each in a process of its own."""
    speed: dict[str, dict] = {}
    spec = {"warmup": s.warmup_updates, "updates": s.updates, "threads": s.threads, "device": s.device}
    for dtype in dtypes:
        config = write_yaml(nmt_config(s, data.prep_exp, data, dtype), s.cache / "runs" / f"speed-{dtype}.yaml")
        speed[dtype] = run_worker(OURS, "ours_train_speed", {"config": str(config), **spec},
                                  s.cache / "runs" / f"speed-{dtype}", s.threads)
    if peer_python is not None:
        joey = joey_config(s, data, s.cache / "runs" / "joey-speed", peer_batch_size,
                           s.warmup_updates + s.updates + 1, valid_every=10**9)  # never validates
        config = write_yaml(joey, s.cache / "runs" / "joey-speed.yaml")
        speed["peer"] = run_worker(THEIRS, "joey_train_speed", {"config": str(config), **spec},
                                   s.cache / "runs", s.threads, peer_python)
    print(f"training: target tokens/s over {s.updates} updates after {s.warmup_updates} warm-up (epoch: ours "
          f"{sum(data.tgt_lengths):,} target tokens, Joey {sum(data.joey_tgt_lengths):,}):")
    for name, r in speed.items():
        r["per_update"] = mean(r["tokens"])
        r["epoch_seconds"] = sum(data.joey_tgt_lengths if name == "peer" else data.tgt_lengths) / r["tok_s"]
        gflops = "" if name == "peer" else f", {r['tok_s'] * train_flops / 1e9:.1f} GFLOP/s"
        gpu = f", GPU peak {r['gpu_peak_mb']:,.0f} MB" if r.get("gpu_peak_mb") else ""
        print(f"  {who(name):16s} {r['tok_s']:9,.0f} tok/s; {r['per_update']:,.0f} real target tokens/update; "
              f"{r['epoch_seconds']:,.0f} s/epoch; peak RSS {r['peak_rss_mb']:,.0f} MB{gpu}{gflops}  "
              f"{machine.tag(r['dtype'])}")
    return speed


def measure_decoding(s: Settings, machine: Machine, data: Data, flops: ModelFlops, dtypes: list[str],
                     models: dict[str, dict], peer_python: Path | None) -> tuple[dict[str, dict], list[str], str]:
    """Greedy and beam-5 decoding of the test sentences: figures keyed 'system/beam', the references and the
    BLEU signature."""
    refs = Path(f"{data.test_prefix}.{TGT}").read_text(encoding="utf-8").split("\n")[:-1]
    warm_prefix = data.plain / "test2016_first20"
    for lang in (SRC, TGT):
        decompress(s.data_dir / "multi30k" / f"test2016.{lang}.gz", Path(f"{warm_prefix}.{lang}"), 20)
    beams = [1, s.beam]
    spec = {"beams": beams, "threads": s.threads, "device": s.device}
    runs: dict[str, dict] = {}
    for dtype in dtypes:
        runs[dtype] = run_worker(OURS, "ours_decode",
                                 {"checkpoint": models[dtype]["checkpoint"], "dtype": dtype,
                                  "source": f"{data.test_prefix}.{SRC}", "alpha": s.beam_alpha,
                                  "batch_tokens": s.decode_batch_tokens, **spec},
                                 s.cache / "runs" / f"decode-{dtype}", s.threads)
    runs.update(decode_variants(s, data, models["fp32"]["checkpoint"], spec))
    if peer_python is not None:
        runs["peer"] = run_worker(THEIRS, "joey_decode",
                                  {"config": models["peer"]["config"], "checkpoint": models["peer"]["checkpoint"],
                                   "warmup_prefix": str(warm_prefix), "test_prefix": str(data.test_prefix), **spec},
                                  s.cache / "runs", s.threads, peer_python)
    print(f"decoding {data.test_prefix.name} ({len(refs)} sentences; reference mean length "
          f"{mean_words(refs):.1f} words; batches of {s.decode_batch_tokens} tokens):")
    figures: dict[str, dict] = {}
    signature = ""
    for name, r in runs.items():
        for beam in beams:
            b = r["beams"][str(beam)]
            score, signature = bleu(b["hyps"], refs)
            f = {"sent_s": len(refs) / b["seconds"], "bleu": score, "len": mean_words(b["hyps"]),
                 "peak_rss_mb": r["peak_rss_mb"]}
            extra = ""
            if name in dtypes:  # int8 and shortlist runs compute other FLOPs than the count assumes
                done = flops.search(r["sentences"], r["src_tokens"], b["hyp_tokens"], b["hyp_src_positions"])
                f.update(gflops=done / b["seconds"] / 1e9, flops_per_hyp_token=done / max(b["hyp_tokens"], 1))
                extra = f"; {f['gflops']:.1f} GFLOP/s over {b['hyp_tokens']:,} hypothesis tokens"
            figures[f"{name}/{beam}"] = f
            print(f"  {who(name):16s} {'greedy' if beam == 1 else f'beam {beam}':7s} {f['sent_s']:8.1f} sent/s; "
                  f"BLEU {score:5.2f}; mean length {f['len']:.1f} words{extra}  {machine.tag(r['dtype'])}")
    print(f"  BLEU signature: {signature}")
    return figures, refs, signature


# Our fp32 model decoded other ways (nmt translate --dtype int8, --shortlist), beside fp32 in the same run.
VARIANTS = {"int8": {"dtype": "int8"}, "fp32+shortlist": {"dtype": "fp32", "shortlist": True},
            "int8+shortlist": {"dtype": "int8", "shortlist": True}}


def decode_variants(s: Settings, data: Data, checkpoint: str, spec: dict) -> dict[str, dict]:
    """Decoding runs of the fp32 model in int8 and with a lexical shortlist (built from its training data)."""
    model_dir = Path(checkpoint).parent
    shortlist = run_worker(OURS, "ours_shortlist", {"config": str(model_dir / "bench.yaml"),
                                                    "output": str(model_dir / "shortlist.npz")},
                           s.cache / "runs" / "shortlist", s.threads)
    log.info("shortlist: %d candidates, %d frequent target subwords", shortlist["candidates"], shortlist["frequent"])
    runs = {}
    for name, variant in VARIANTS.items():
        table = shortlist["shortlist"] if variant.get("shortlist") else None
        runs[name] = run_worker(OURS, "ours_decode",
                                {"checkpoint": checkpoint, "dtype": variant["dtype"], "shortlist": table,
                                 "source": f"{data.test_prefix}.{SRC}", "alpha": s.beam_alpha,
                                 "batch_tokens": s.decode_batch_tokens, **spec},
                                s.cache / "runs" / f"decode-{name}", s.threads)
    return runs


def bench(s: Settings) -> dict:
    """The whole benchmark; prints the figures as it goes and returns the summary (the JSON line)."""
    import torch

    from nmt.precision import dtype_name, resolve_device, resolve_dtype

    started = time.time()
    machine = Machine.here(s.threads, s.device)
    auto = dtype_name(resolve_dtype("auto", resolve_device(s.device)))
    dtypes = ["fp32"] if auto == "fp32" else ["fp32", auto]
    s.cache.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine.describe()}; torch {torch.__version__}; dtype auto = {auto}", flush=True)
    if s.model_updates:
        print(f"note: --model-updates {s.model_updates}: the decoding models are trained for {s.model_updates} "
              "updates only, not to a dev BLEU target; their decoding speeds are not those of translating models",
              flush=True)

    peak = measure_peak(s, machine)
    data = prepare_data(s)
    flops = ModelFlops.of(bench_model(), data.vocab_size)
    peer_python = None if s.skip_peer else ensure_peer(s)
    peer_batch_size = match_joey_batch_size(data, s.seed)
    joey_4096 = joey_batches(data.joey_src_lengths, data.joey_tgt_lengths, 4096, s.seed)
    print(f"batches: ours max_tokens {s.max_tokens} holds {mean(data.ours_batch_tokens):,.0f} real target tokens "
          f"per update on average; Joey's batch_size 4096 would hold {mean(joey_4096):,.0f}, so it gets "
          f"batch_size {peer_batch_size} (both counted over a whole epoch's batches)")
    train_flops = flops.training_per_target_token(data.src_lengths, data.tgt_lengths)
    speed = measure_training(s, machine, data, dtypes, peer_python, peer_batch_size, train_flops)
    models = train_our_models(s, data, dtypes)
    if peer_python is not None:
        models["peer"] = train_peer_model(s, data, peer_python, peer_batch_size)
    bf16_counts = report_models(s, machine, data, models, auto)
    decoding, refs, signature = measure_decoding(s, machine, data, flops, dtypes, models, peer_python)
    summary = summarize(s, machine, peak, speed, models, decoding, refs, auto, bf16_counts, train_flops,
                        peer_batch_size if peer_python is not None else None, time.time() - started)
    summary["bleu_signature"] = signature
    return summary


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        summary = bench(settings)
    except NMTError as err:  # a user's mistake (a device that is not there, a bad path): one line
        print(f"bench: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
