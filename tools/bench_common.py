"""What every process of `tools/bench.py` shares, under whichever virtual environment it runs: how a worker
receives its spec and returns its figures, its threads, device synchronisation and peak memory, and the
matrix-product rate worker (plain torch).

A worker is a function from a spec (a JSON object) to figures (another). The driver writes the spec to a file
and runs `PYTHON tools/bench_ours.py KIND SPEC OUT` (ours, in this venv) or `tools/bench_peer.py` (the peer,
under its own venv); the worker writes OUT atomically. Nothing here imports nmt or the peer, and torch only
inside functions, so that the driver can import this module before it has chosen a venv.
"""

from __future__ import annotations

import json
import logging
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

Worker = Callable[[dict], dict]


def set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def sync(device: str) -> None:
    """Wait for the device's queued work, so that a timer reads the work done, not the work queued."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def gpu_peak_mb(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None


def peak_rss_mb() -> float:
    """This process's peak resident set size (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker_peak(spec: dict) -> dict:
    """Matrix-product rates (GFLOP/s) in fp32 and bf16, plain tensors, per shape (m, k, n)."""
    import torch

    set_threads(spec["threads"])
    device = torch.device(spec["device"])
    results = []
    for dtype_name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        fp32_best = max((r["gflops"] for r in results if r["dtype"] == "fp32"), default=0.0)
        for m, k, n in spec["shapes"]:  # smallest first
            a = torch.randn(m, k, device=device).to(dtype)
            b = torch.randn(k, n, device=device).to(dtype)
            torch.mm(a, b)  # one untimed product: kernel selection, caches
            sync(spec["device"])
            iterations, started = 0, time.perf_counter()
            while True:
                torch.mm(a, b)
                sync(spec["device"])
                iterations += 1
                elapsed = time.perf_counter() - started
                if elapsed >= spec["seconds"]:
                    break
            gflops = 2.0 * m * k * n * iterations / elapsed / 1e9
            results.append({"dtype": dtype_name, "shape": [m, k, n], "gflops": gflops})
            if dtype_name == "bf16" and gflops < fp32_best / 4:
                # A CPU without native bf16 emulates it: the larger shapes would take minutes to say the same.
                results[-1]["note"] = "bf16 emulated (much slower than fp32); larger shapes skipped"
                break
    return {"products": results}


def worker_main(workers: dict[str, Worker], argv: list[str]) -> int:
    """`KIND SPEC OUT`: run workers[KIND] on the JSON in SPEC, write its figures to OUT (atomically)."""
    kind, spec_path, out_path = argv
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s",
                        datefmt="%H:%M:%S")
    result = workers[kind](json.loads(Path(spec_path).read_text()))
    tmp = Path(out_path + ".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(out_path)
    return 0
