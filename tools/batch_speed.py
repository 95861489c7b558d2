"""How fast is a search per sentence when it gets few sentences at a time?

    NMT_DATA_DIR=../shared/data python tools/batch_speed.py -c exp/demo/final.pt --sizes 16 32 64 256 --threads 2

The service batches concurrent requests, so with 32 clients of one sentence each a search gets at most 32
sentences, while `nmt translate` gives it a few hundred. This decodes the first `--sentences` lines of test2016
(already encoded, so only the search is timed) in consecutive batches of each size, the sizes taking turns in
each of `--repeats` rounds, and prints sentences/s per size: the best round, and every round. `--workers 2`
runs two batches at a time, each in a thread of its own with one torch thread (then `--threads` is ignored).
"""

from __future__ import annotations

import argparse
import gzip
import os
import threading
import time
from pathlib import Path


def _rate(translator, batches: list[list], workers: int) -> float:
    """Sentences per second over the batches, `workers` of them at a time."""
    def run(share: list[list]) -> None:
        for batch in share:
            translator.translate_encoded(batch)

    start = time.perf_counter()
    threads = [threading.Thread(target=run, args=(batches[k::workers],)) for k in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(len(b) for b in batches) / (time.perf_counter() - start)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-c", "--checkpoint", required=True)
    p.add_argument("--input", default=None, help="plain or .gz text (default: $NMT_DATA_DIR/multi30k/test2016.de.gz)")
    p.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 64, 256])
    p.add_argument("--sentences", type=int, default=512)
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=1, choices=(1, 2))
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    import torch

    from nmt.precision import cpu_kind
    from nmt.translator import Translator

    source = Path(args.input or Path(os.environ.get("NMT_DATA_DIR", "../shared/data")) / "multi30k/test2016.de.gz")
    opener = gzip.open if source.suffix == ".gz" else open
    with opener(source, "rt", encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f if line.strip()][:args.sentences]
    torch.set_num_threads(1 if args.workers > 1 else args.threads)
    translator = Translator.load(args.checkpoint, device="cpu", dtype="fp32", beam=args.beam)
    encoded = translator.encode(lines)
    translator.translate_encoded(encoded[:16])  # warm-up
    rounds: dict[int, list[float]] = {size: [] for size in args.sizes}
    for _ in range(args.repeats):
        for size in args.sizes:
            batches = [encoded[i:i + size] for i in range(0, len(encoded), size)]
            rounds[size].append(_rate(translator, batches, args.workers))
    threads = f"{args.workers} workers x 1 thread" if args.workers > 1 else f"{args.threads} thread(s)"
    print(f"{len(encoded)} sentences, beam {args.beam}, fp32, {threads}  [{cpu_kind()}]")
    for size, rates in rounds.items():
        print(f"  batches of {size:4d}: best {max(rates):6.1f} sentences/s  (rounds: "
              f"{', '.join(f'{r:.1f}' for r in rates)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
