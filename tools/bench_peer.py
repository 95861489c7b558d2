"""Joey NMT 2.3.0's side of `tools/bench.py`: each worker runs in a process of its own under the peer's venv
(`CACHE/joey-venv`: torch 2.13.0, joeynmt 2.3.0), so this file imports nothing from nmt: the driver writes
its configs and does all the counting (BLEU, FLOPs) on the figures it returns.

    CACHE/joey-venv/bin/python tools/bench_peer.py KIND SPEC.json OUT.json   # KIND: joey_train_speed, joey_model,
                                                                             # joey_decode

Joey's training loop has no hook for timing its updates or for stopping at a BLEU target, so within this process
(and only here) two of Joey's `TrainManager` methods are wrapped: the only way to time its own loop from the
outside without copying it.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any

from bench_common import gpu_peak_mb, peak_rss_mb, set_threads, sync, worker_main


def _joey_run_training(spec: dict, on_validate: Any = None) -> tuple[dict, list]:
    """Joey NMT's own training entry point (what `python -m joeynmt train` runs), with every update's start time
    and real target tokens recorded, and `on_validate(manager)` called after each validation."""
    from joeynmt.config import load_config
    from joeynmt.helpers import make_model_dir
    from joeynmt.helpers_for_ddp import get_logger
    from joeynmt.training import TrainManager, train

    set_threads(spec["threads"])
    cfg = load_config(Path(spec["config"]))
    model_dir = Path(cfg["model_dir"])
    make_model_dir(model_dir, overwrite=True)
    shutil.copy2(spec["config"], model_dir / "config.yaml")
    get_logger("", log_file=str(model_dir / "train.log"))
    steps: list[tuple[float, int]] = []
    train_step, validate = TrainManager._train_step, TrainManager._validate

    def timed_step(self: Any, batch: Any) -> Any:
        steps.append((time.perf_counter(), int(batch.ntokens)))
        return train_step(self, batch)

    def checked_validate(self: Any, valid_data: Any) -> None:
        validate(self, valid_data)
        if on_validate is not None:
            on_validate(self)

    # The peer's classes, in the peer's own process (see the module docstring); never nmt's.
    TrainManager._train_step, TrainManager._validate = timed_step, checked_validate
    started = time.time()
    train(rank=0, world_size=None, cfg=cfg, skip_test=True)
    return {"wall_seconds": time.time() - started, "model_dir": str(model_dir)}, steps


def worker_joey_train_speed(spec: dict) -> dict:
    """Joey's training loop over warmup + updates + 1 updates; the rate is taken between update starts, so each
    timed update includes its data loading, forward, backward, clipping, optimiser and scheduler steps."""
    import torch

    _, steps = _joey_run_training(spec)
    warmup, updates = spec["warmup"], spec["updates"]
    if len(steps) < warmup + updates + 1:
        raise SystemExit(f"Joey NMT ran {len(steps)} updates, expected {warmup + updates + 1}")
    tokens = [n for _, n in steps[warmup: warmup + updates]]
    seconds = steps[warmup + updates][0] - steps[warmup][0]
    return {"dtype": "fp32", "tokens": tokens, "seconds": seconds, "tok_s": sum(tokens) / seconds,
            "peak_rss_mb": peak_rss_mb(), "gpu_peak_mb": gpu_peak_mb(spec["device"]),
            "threads": torch.get_num_threads()}


def worker_joey_model(spec: dict) -> dict:
    """Train Joey's decoding model, stopping at the first validation whose dev BLEU reaches the target."""
    target = spec["target_bleu"]
    history: list[tuple[int, float]] = []

    def on_validate(manager: Any) -> None:
        # Joey keeps only the best score; the log has each one. Its stats know the best so far.
        history.append((manager.stats.steps, float(manager.stats.best_ckpt_score)))
        if target is not None and manager.stats.best_ckpt_score >= target:
            manager.stats.is_max_update = True  # Joey's own way out of its loop

    info, steps = _joey_run_training(spec, on_validate)
    best = Path(info["model_dir"]) / "best.ckpt"
    if not best.exists():
        raise SystemExit(f"Joey NMT wrote no {best}")
    best_bleu = history[-1][1] if history else None
    # Joey's best checkpoint is its best validation: the dev BLEU of the model that decodes.
    return {"checkpoint": str(best.resolve()), "updates": len(steps), "dev_bleu": best_bleu,
            "best_dev_bleu": best_bleu, "dev_bleu_by_update": {str(u): b for u, b in history}, **info}


def worker_joey_decode(spec: dict) -> dict:
    """Joey's `predict` (its test-time batching, search and post-processing) on the test sentences, greedy and
    beam 5, timed; a 20-sentence run first warms each search up, untimed."""
    import torch
    from joeynmt.config import load_config, parse_global_args
    from joeynmt.data import load_data
    from joeynmt.prediction import predict, prepare

    set_threads(spec["threads"])
    cfg = load_config(Path(spec["config"]))
    cfg["data"]["test"] = spec["test_prefix"]  # the model's config names the test set of the run that trained it
    cfg["testing"]["load_model"] = spec["checkpoint"]
    args = parse_global_args(cfg, rank=0, mode="test")
    model, _, _, test_data = prepare(args, rank=0, mode="test")
    warm_cfg = load_config(Path(spec["config"]))
    warm_cfg["data"]["test"] = spec["warmup_prefix"]
    warm_cfg["data"]["special_symbols"] = cfg["data"]["special_symbols"]
    *_, warm_data = load_data(warm_cfg["data"], datasets=["test"])
    results = {}
    for beam in spec["beams"]:
        test_args = args.test._replace(beam_size=beam, eval_metrics=[], n_best=1, return_prob="none",
                                       return_attention=False)
        run = lambda data: predict(model=model, data=data, device=args.device, n_gpu=args.n_gpu,  # noqa: E731
                                   rank=0, compute_loss=False, normalization=args.train.normalization,
                                   num_workers=0, args=test_args, autocast=args.autocast)
        run(warm_data)
        sync(spec["device"])
        started = time.perf_counter()
        _, _, hyps, *_ = run(test_data)
        sync(spec["device"])
        results[str(beam)] = {"seconds": time.perf_counter() - started, "hyps": list(hyps)}
    return {"dtype": "fp32", "sentences": len(test_data), "beams": results, "peak_rss_mb": peak_rss_mb(),
            "gpu_peak_mb": gpu_peak_mb(spec["device"]), "threads": torch.get_num_threads()}


WORKERS = {
    "joey_train_speed": worker_joey_train_speed,
    "joey_model": worker_joey_model,
    "joey_decode": worker_joey_decode,
}

if __name__ == "__main__":
    sys.exit(worker_main(WORKERS, sys.argv[1:]))
