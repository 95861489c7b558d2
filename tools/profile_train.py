"""Where does a training update spend its time? torch.profiler over a few of `Trainer.train_update`'s updates.

    python tools/profile_train.py recipes/multi30k/conf/base_de_en.yaml exp_dir=/tmp/prof \\
        model.tie_embeddings=none model.dropout=0.2 model.emb_dropout=0.2 --updates 10

It prints the operators by self CPU time, then the share of the time spent in matrix products (the FLOPs
`tools/bench.py` counts) against everything else (element-wise gate and attention arithmetic, dropout, the
optimiser, Python between kernels). That split says how far the fraction-of-peak figure can rise by making
products faster and how much is bound by the small operators a recurrent decoder runs once per step.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# Operators whose time is matrix-product time (their own kernels, not the Python around them).
MATMUL_OPS = ("aten::addmm", "aten::mm", "aten::bmm", "aten::matmul", "aten::linear", "aten::baddbmm",
              "aten::mkldnn_rnn_layer", "aten::mkldnn_rnn_layer_backward", "aten::_mkldnn_matmul",
              "aten::mkldnn_matmul")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="section.key=value")
    p.add_argument("--updates", type=int, default=10, help="profiled updates (default: 10)")
    p.add_argument("--warmup", type=int, default=3, help="updates before profiling (default: 3)")
    p.add_argument("--rows", type=int, default=25, help="operators listed (default: 25)")
    args = p.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    from nmt.config import load_config
    from nmt.data.batching import make_batches
    from nmt.data.prepare import prepare
    from nmt.precision import cpu_kind, dtype_name, resolve_device
    from nmt.distributed import Dist
    from nmt.tokens import with_eos
    from nmt.train import Trainer, seed_everything

    cfg = load_config(args.config, args.overrides)
    torch.set_num_threads(cfg.train.threads or torch.get_num_threads())
    device = resolve_device(cfg.train.device)
    data = prepare(cfg)
    seed_everything(cfg.train.seed)
    trainer = Trainer(cfg, data, device, Dist())
    batches = make_batches(with_eos(data.train.src_lengths), with_eos(data.train.tgt_lengths), cfg.train.max_tokens,
                           seed=cfg.train.seed, epoch=0)
    for batch in batches[: args.warmup]:
        trainer.train_update([batch])
    timed = batches[args.warmup: args.warmup + args.updates]
    started = time.perf_counter()
    tokens = 0
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for batch in timed:
            tokens += trainer.train_update([batch])[2]
    seconds = time.perf_counter() - started
    print(f"{cpu_kind()}; dtype {dtype_name(trainer.dtype)}; {torch.get_num_threads()} thread(s); "
          f"{len(timed)} updates, {tokens:,} target tokens, {tokens / seconds:,.0f} tok/s under the profiler")
    averages = prof.key_averages()
    print(averages.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    total = sum(e.self_cpu_time_total for e in averages)
    matmul = sum(e.self_cpu_time_total for e in averages if e.key in MATMUL_OPS)
    calls = sum(e.count for e in averages if e.key.startswith("aten::"))
    print(f"matrix products: {100 * matmul / total:.1f}% of the operators' self time; everything else "
          f"{100 * (total - matmul) / total:.1f}%; {calls / len(timed):,.0f} aten calls per update")


if __name__ == "__main__":
    main()
