"""Where does beam search spend its time? torch.profiler over one `Translator.translate_lines` call.

    python tools/profile_search.py .bench_cache/models/nmt-bf16-*/final.pt \\
        $NMT_DATA_DIR/multi30k/test2016.de.gz --beam 5 --dtype bf16

Prints the operators by self CPU time. Matrix products are what `tools/bench.py` counts as FLOPs; the rest
(attention's element-wise terms, casts, log-softmax and top-k over the vocabulary, reordering the beams) is what
keeps search below the machine's matrix-product rate.
"""

from __future__ import annotations

import argparse
import gzip
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("source", help="plain or .gz text, one sentence per line")
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--sentences", type=int, default=1000, help="first N lines (default: 1000)")
    p.add_argument("--dtype", default="auto", help="auto, fp32 or bf16 (default: auto)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rows", type=int, default=20, help="operators listed (default: 20)")
    args = p.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    from nmt.precision import cpu_kind
    from nmt.translator import Translator

    torch.set_num_threads(args.threads)
    translator = Translator.load(args.checkpoint, device="cpu", dtype=args.dtype, beam=args.beam)
    dtype = translator.dtype
    opener = gzip.open if args.source.endswith(".gz") else open
    with opener(args.source, "rt", encoding="utf-8") as f:
        lines = f.read().splitlines()[: args.sentences]
    run = translator.translate_lines
    run(lines[:20])  # warm-up
    started = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run(lines)
    seconds = time.perf_counter() - started
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
    print(f"{len(lines)} sentences, beam {args.beam}, {seconds:.1f} s under the profiler  [{cpu_kind()} | "
          f"{str(dtype).removeprefix('torch.')} | {args.threads} thread(s)]")


if __name__ == "__main__":
    main()
