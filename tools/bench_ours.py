"""nmt's side of `tools/bench.py`: each worker runs in a process of its own under this project's venv, through
nmt's public API only (no class or module attribute of nmt is replaced), so that a renamed class or option fails
here, loudly, and in `tests/test_bench.py`.

    python tools/bench_ours.py KIND SPEC.json OUT.json
    # KIND: peak, ours_train_speed, ours_model, ours_decode, ours_shortlist
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS.parent))  # this checkout's nmt, whatever is installed

from bench_common import gpu_peak_mb, peak_rss_mb, set_threads, sync, worker_main, worker_peak  # noqa: E402


def worker_ours_train_speed(spec: dict) -> dict:
    """Our training loop's updates (`Trainer.train_update`: collate, forward, backward, clip, step), timed."""
    import torch

    from nmt.config import load_config
    from nmt.data.batching import make_batches
    from nmt.data.prepare import prepare
    from nmt.distributed import Dist
    from nmt.precision import dtype_name, resolve_device
    from nmt.tokens import with_eos
    from nmt.train import Trainer, seed_everything

    set_threads(spec["threads"])
    cfg = load_config(spec["config"])
    device = resolve_device(cfg.train.device)
    data = prepare(cfg)
    seed_everything(cfg.train.seed)
    trainer = Trainer(cfg, data, device, Dist())
    src_len, tgt_len = with_eos(data.train.src_lengths), with_eos(data.train.tgt_lengths)
    batches: list = []
    epoch = 0
    while len(batches) < spec["warmup"] + spec["updates"]:
        batches += make_batches(src_len, tgt_len, cfg.train.max_tokens, seed=cfg.train.seed, epoch=epoch)
        epoch += 1
    for batch in batches[: spec["warmup"]]:
        trainer.train_update([batch])
    sync(spec["device"])
    tokens = []
    started = time.perf_counter()
    for batch in batches[spec["warmup"]: spec["warmup"] + spec["updates"]]:
        tokens.append(trainer.train_update([batch])[2])  # .item() inside: synchronised
    seconds = time.perf_counter() - started
    return {"dtype": dtype_name(trainer.dtype), "tokens": tokens, "seconds": seconds,
            "tok_s": sum(tokens) / seconds, "peak_rss_mb": peak_rss_mb(), "gpu_peak_mb": gpu_peak_mb(spec["device"]),
            "threads": torch.get_num_threads()}


def worker_ours_model(spec: dict) -> dict:
    """Train our decoding model with `nmt.train.train` (resumable); the config's `train.stop_at_bleu` stops it at
    the first validation whose dev BLEU reaches the target."""
    from nmt.config import load_config
    from nmt.train import train

    set_threads(spec["threads"])
    cfg = load_config(spec["config"])
    code = train(cfg, resume=True, run_tests=False)
    if code != 0:
        raise SystemExit(code)
    exp = Path(cfg.exp_dir)
    records = [json.loads(line) for line in (exp / "metrics.jsonl").read_text().splitlines()]
    valid = [r for r in records if r.get("kind") == "valid"]
    # final.pt is the best validation's checkpoint (keep_best 1): its BLEU is the decoding model's
    return {"checkpoint": str(exp / "final.pt"), "updates": valid[-1]["update"], "epochs": valid[-1]["epoch"],
            "dev_bleu": max(v["bleu"] for v in valid), "dev_bleu_last": valid[-1]["bleu"],
            "dev_bleu_by_update": {str(v["update"]): v["bleu"] for v in valid},
            "train_minutes": valid[-1]["train_minutes"]}


def worker_ours_decode(spec: dict) -> dict:
    """Translate the test sentences greedy and with beam 5 (`Translator.translate_lines`: subword encoding,
    batching, search, detokenisation), timed; the search's own `SearchStats` count the hypothesis tokens it
    computed and the source positions they attended to (for the FLOP count)."""
    from nmt.precision import dtype_name
    from nmt.tokens import with_eos
    from nmt.translator import Translator

    set_threads(spec["threads"])
    base = Translator.load(spec["checkpoint"], device=spec["device"], dtype=spec["dtype"], alpha=spec["alpha"],
                           length_penalty="gnmt", batch_tokens=spec["batch_tokens"], nbest=1,
                           shortlist=spec.get("shortlist"))
    sentences = Path(spec["source"]).read_text(encoding="utf-8").split("\n")[:-1]
    src_tokens = sum(with_eos(len(ids)) for ids in base.encode(sentences) if ids)
    results = {}
    for beam in spec["beams"]:
        translator = base.with_options(beam=beam)
        translator.translate_lines(sentences[:20])  # warm-up: kernel selection and caches, untimed
        before = dataclasses.replace(translator.search.stats)
        sync(spec["device"])
        started = time.perf_counter()
        hyps = translator.translate_lines(sentences)
        sync(spec["device"])
        seconds = time.perf_counter() - started
        after = translator.search.stats
        results[str(beam)] = {"seconds": seconds, "hyps": [h[0].text for h in hyps],
                              "hyp_tokens": after.rows - before.rows,
                              "hyp_src_positions": after.row_src_positions - before.row_src_positions}
    return {"dtype": dtype_name(base.dtype), "sentences": len(sentences), "src_tokens": src_tokens,
            "beams": results, "peak_rss_mb": peak_rss_mb(), "gpu_peak_mb": gpu_peak_mb(spec["device"])}


def worker_ours_shortlist(spec: dict) -> dict:
    """The lexical shortlist of the decoding model's training data (what `nmt shortlist` writes)."""
    from nmt.config import load_config
    from nmt.data.prepare import prepare
    from nmt.shortlist import build_shortlist

    data = prepare(load_config(spec["config"]))  # the model's folder holds the prepared cache
    table = build_shortlist(data.train, data.src_model, data.tgt_model)
    table.save(spec["output"])
    return {"shortlist": spec["output"], "candidates": len(table.targets), "frequent": len(table.frequent)}


WORKERS = {
    "peak": worker_peak,
    "ours_train_speed": worker_ours_train_speed,
    "ours_model": worker_ours_model,
    "ours_decode": worker_ours_decode,
    "ours_shortlist": worker_ours_shortlist,
}

if __name__ == "__main__":
    sys.exit(worker_main(WORKERS, sys.argv[1:]))
