#!/usr/bin/env python
"""Load test of `nmt serve`: closed-loop clients on loopback, one test2016 sentence per request, with batching
and without it in the same run, beside `nmt translate` on the same sentences as the file-throughput reference.

    .venv/bin/python tools/loadtest.py -c exp/demo/final.pt                  # 1, 8, 32, 128 clients
    .venv/bin/python tools/loadtest.py -c exp/demo/final.pt --levels 32 --seconds 30

Each client sends a request, waits for its answer, and sends the next (closed loop), on a keep-alive connection
of its own; client k sends sentences k, k + n, k + 2n, ... of the set (n clients). Every answer is checked
against `nmt translate`'s line for that sentence: a difference counts as an error. Each level stops after
`--seconds` or `--max-requests`, whichever comes first (the answers in flight then are still awaited and
counted); servers listen on 127.0.0.1 only, port chosen by the system, and are stopped with SIGTERM, which
must end them with exit code 0.

Two servers without batching: `no batching` is the same command with `--searches 1 --max-wait-ms 0
--max-batch-requests 1`, one request at a time (as a server with a lock per model, OpenNMT-py's, runs); `no
batching x2` has `--searches 2`, two requests at a time, one each, on a thread each. `nmt translate` runs once
first (its lines are the reference every answer is checked against) and again just before and just after each
batching level, whose ratio to the file is taken against the mean of those two runs: the machine's speed drifts
over minutes.

Prints one row per server and level (sentences/s, p50/p95/p99 latency, errors, and from the server's /metrics
the sentences per search and `searching`: seconds of search per second, up to the number of searches running at
once), then the ratios the acceptance asks for, and the CPU kind; `--json PATH` keeps the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

NMT = [sys.executable, "-m", "nmt"]
ROOT = Path(__file__).resolve().parents[1]  # the checkout whose `nmt` the servers and `nmt translate` run


def nmt_env() -> dict[str, str]:
    """The environment of the servers and of `nmt translate`: they run this checkout's `nmt`. `python -m nmt`
    puts the working directory first on sys.path, ahead of PYTHONPATH, so a comparison that ran a second
    checkout's code through PYTHONPATH from the main checkout ran the main checkout's code in both arms (found at
    2132c5e); PYTHONSAFEPATH (Python 3.11+) leaves the working directory out."""
    paths = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONSAFEPATH": "1", "PYTHONPATH": os.pathsep.join(paths)}


READY = re.compile(r"serving .* on (http://[\d.]+:(\d+))")
SPEED = re.compile(r"translated (\d+) sentences in ([\d.]+)s: ([\d.]+) sentences/s")
NO_BATCHING = ["--max-wait-ms", "0", "--max-batch-requests", "1"]
MODES = {"batching": [], "no batching": ["--searches", "1", *NO_BATCHING], "no batching x2": ["--searches", "2",
                                                                                             *NO_BATCHING]}


@dataclass
class Level:
    mode: str
    clients: int
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list, repr=False)
    first_error: str = ""
    sentences_per_search: float = float("nan")  # from the server's /metrics
    searching: float = float("nan")  # seconds of search per second of the level (up to `--searches`)
    file_rates: tuple[float, ...] = ()  # with batching: `nmt translate`'s sentences/s just before and just after

    @property
    def file_rate(self) -> float:
        """The file's rate beside the level: the mean of the runs that bracket it (the machine drifts)."""
        return float(np.mean(self.file_rates)) if self.file_rates else float("nan")

    @property
    def sentences_per_second(self) -> float:
        return (self.requests - self.errors) / max(self.seconds, 1e-9)

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1000 if self.latencies else float("nan")

    def summary(self) -> dict:
        return {"mode": self.mode, "clients": self.clients, "requests": self.requests, "errors": self.errors,
                "seconds": round(self.seconds, 2), "sentences_per_s": round(self.sentences_per_second, 2),
                **{f"p{q}_ms": round(self.percentile(q), 1) for q in (50, 95, 99)},
                "sentences_per_search": round(self.sentences_per_search, 2), "searching": round(self.searching, 2),
                "file_sentences_per_s": None if np.isnan(self.file_rate) else round(self.file_rate, 2),
                "file_sentences_per_s_before_after": list(self.file_rates),
                "first_error": self.first_error}


# ----------------------------------------------------------------------------------------------- the client


async def _post(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes) -> tuple[int, bytes]:
    """One HTTP/1.1 request on a keep-alive connection: a client this small costs the measured server little."""
    writer.write(b"POST /v1/translate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
    return status, await reader.readexactly(length)


async def _client(k: int, level: Level, port: int, sentences: list[str], references: list[str],
                  stop: dict) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        index = k
        while time.perf_counter() < stop["deadline"] and stop["left"] > 0:
            stop["left"] -= 1
            i = index % len(sentences)
            index += level.clients
            start = time.perf_counter()
            try:
                status, body = await _post(reader, writer, json.dumps({"text": sentences[i]}).encode())
                text = json.loads(body)["translations"][0]["text"] if status == 200 else None
            except (OSError, asyncio.IncompleteReadError, ValueError, KeyError) as err:
                status, text, body = 0, None, repr(err).encode()
            level.requests += 1
            if text != references[i]:
                level.errors += 1
                level.first_error = level.first_error or f"line {i}: status {status}: {body[:200]!r}"
                if status == 0:
                    return
            else:
                level.latencies.append(time.perf_counter() - start)
    finally:
        writer.close()


async def _run_level(level: Level, port: int, sentences: list[str], references: list[str], seconds: float,
                     max_requests: int) -> None:
    stop = {"deadline": time.perf_counter() + seconds, "left": max_requests}
    start = time.perf_counter()
    await asyncio.gather(*(_client(k, level, port, sentences, references, stop) for k in range(level.clients)))
    level.seconds = time.perf_counter() - start


def search_totals(port: int) -> tuple[float, float, float]:
    """(sentences, searches, seconds of search) so far, from the server's histograms."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        text = response.read().decode()
    total = {name: sum(float(v) for v in re.findall(rf"^nmt_batch_sentences_{name}{{[^}}]*}} (\S+)$", text, re.M))
             for name in ("sum", "count")}
    seconds = sum(float(v) for v in re.findall(r"^nmt_search_seconds_sum{[^}]*} (\S+)$", text, re.M))
    return total["sum"], total["count"], seconds


# ----------------------------------------------------------------------------------------------- processes


def start_server(checkpoint: str, threads: int, extra: list[str], log_path: Path) -> tuple[subprocess.Popen, int]:
    log = open(log_path, "w")
    process = subprocess.Popen([*NMT, "serve", "-c", checkpoint, "--host", "127.0.0.1", "--port", "0",
                                "--threads", str(threads), "--no-access-log", "--timeout", "600", *extra],
                               stdout=subprocess.DEVNULL, stderr=log, env=nmt_env())
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        match = READY.search(log_path.read_text())
        if match:
            return process, int(match.group(2))
        if process.poll() is not None:
            raise SystemExit(f"nmt serve exited with {process.returncode}:\n{log_path.read_text()}")
        time.sleep(0.1)
    process.kill()
    raise SystemExit("nmt serve did not start within 300 s")


def stop_server(process: subprocess.Popen) -> int:
    process.terminate()  # SIGTERM: finish what is in progress, exit 0
    try:
        return process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        return -9


def file_reference(checkpoint: str, source: Path, output: Path, threads: int) -> tuple[list[str], float]:
    """`nmt translate`'s lines and its sentences/s (its own figure, without loading the model)."""
    result = subprocess.run([*NMT, "translate", "-c", checkpoint, "-i", str(source), "-o", str(output),
                             "--threads", str(threads)], capture_output=True, text=True, check=True, env=nmt_env())
    speed = SPEED.search(result.stderr)
    if speed is None:
        raise SystemExit(f"no speed line from nmt translate:\n{result.stderr}")
    return output.read_text(encoding="utf-8").split("\n")[:-1], float(speed.group(3))


def read_sentences(args: argparse.Namespace) -> list[str]:
    path = Path(args.input) if args.input else Path(os.environ.get("NMT_DATA_DIR", "../shared/data")) / \
        "multi30k" / "test2016.de.gz"
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f]
    return [line for line in lines if line.strip()][:args.sentences]


# ----------------------------------------------------------------------------------------------- the report


def report(levels: list[Level], file_rate: float, cpu: str) -> dict:
    print(f"\nCPU: {cpu}")
    print(f"nmt translate (file, same sentences), first run: {file_rate:.2f} sentences/s\n")
    print(f"{'server':<14} {'clients':>7} {'requests':>8} {'errors':>6} {'sent/s':>8} {'p50 ms':>8} "
          f"{'p95 ms':>8} {'p99 ms':>8} {'sent/search':>11} {'searching':>9} {'file sent/s':>11}")
    for level in levels:
        s = level.summary()
        file_rate = "" if s["file_sentences_per_s"] is None else f"{s['file_sentences_per_s']:.2f}"
        print(f"{s['mode']:<14} {s['clients']:>7} {s['requests']:>8} {s['errors']:>6} {s['sentences_per_s']:>8.2f} "
              f"{s['p50_ms']:>8.1f} {s['p95_ms']:>8.1f} {s['p99_ms']:>8.1f} {s['sentences_per_search']:>11.1f} "
              f"{s['searching']:>9.2f} {file_rate:>11}")
    ratios = {}
    by = {(lv.mode, lv.clients): lv for lv in levels}
    print()
    for clients in sorted({lv.clients for lv in levels}):
        on = by.get(("batching", clients))
        if on is None:
            continue
        ratios[clients] = {"batching_vs_file": on.sentences_per_second / on.file_rate}
        line = f"{clients:>4} clients:"
        for mode, key in (("no batching", "batching_vs_no_batching"), ("no batching x2", "batching_vs_no_batching_x2")):
            off = by.get((mode, clients))
            if off is not None and off.sentences_per_second:
                ratios[clients][key] = on.sentences_per_second / off.sentences_per_second
                line += f" batching / {mode} = {ratios[clients][key]:.2f}x,"
        print(f"{line} batching / nmt translate = {ratios[clients]['batching_vs_file']:.0%}")
    for level in levels:
        if level.errors:
            print(f"errors with {level.mode}, {level.clients} clients: first: {level.first_error}")
    return ratios


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--checkpoint", required=True)
    parser.add_argument("--input", default=None, help="source sentences (default: $NMT_DATA_DIR/multi30k/"
                        "test2016.de.gz)")
    parser.add_argument("--sentences", type=int, default=1000, help="use the first N non-empty lines")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32, 128], help="concurrent clients")
    parser.add_argument("--seconds", type=float, default=30.0, help="per server and level (default: 30)")
    parser.add_argument("--max-requests", type=int, default=5000, help="per server and level (default: 5000)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads, the same for "
                        "the servers and nmt translate (default: the CPU count)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--serve-args", default="", help="more options for the batching server, e.g. "
                        "'--max-wait-ms 20'")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))  # this checkout's nmt here too
    from nmt.errors import NMTError
    from nmt.outputs import atomic_output, check_outputs
    from nmt.precision import cpu_kind

    try:  # before minutes of measuring: --json must not name the checkpoint or the input
        check_outputs([args.json], [args.checkpoint, args.input])
    except NMTError as err:
        raise SystemExit(f"tools/loadtest.py: {err}") from None
    sentences = read_sentences(args)
    with tempfile.TemporaryDirectory(prefix="nmt-loadtest-") as tmp:
        source = Path(tmp) / "source.txt"
        source.write_text("".join(s + "\n" for s in sentences), encoding="utf-8")
        references, file_rate = file_reference(args.checkpoint, source, Path(tmp) / "reference.txt", args.threads)
        print(f"nmt translate: {len(sentences)} sentences, {file_rate:.2f} sentences/s", flush=True)

        def file_again() -> float:
            return file_reference(args.checkpoint, source, Path(tmp) / "again.txt", args.threads)[1]

        levels: list[Level] = []
        for mode in args.modes:
            extra = MODES[mode] or args.serve_args.split()
            process, port = start_server(args.checkpoint, args.threads, extra, Path(tmp) / "serve.log")
            try:
                asyncio.run(_run_level(Level(mode, 1), port, sentences[:2], references[:2], 60, 2))  # warm-up
                for clients in args.levels:
                    level = Level(mode, clients)
                    # The machine's speed drifts over minutes: the file runs just before and just after each
                    # batching level, and the level is compared with their mean.
                    file_before = file_again() if mode == "batching" else None
                    before = search_totals(port)
                    asyncio.run(_run_level(level, port, sentences, references, args.seconds, args.max_requests))
                    after = search_totals(port)
                    if file_before is not None:
                        level.file_rates = (file_before, file_again())
                    level.sentences_per_search = (after[0] - before[0]) / max(after[1] - before[1], 1)
                    level.searching = (after[2] - before[2]) / max(level.seconds, 1e-9)
                    levels.append(level)
                    print(json.dumps(level.summary()), flush=True)
            finally:
                code = stop_server(process)
            if code != 0:
                print(f"nmt serve ({mode}) exited with {code} after SIGTERM", file=sys.stderr)
                return 1
    ratios = report(levels, file_rate, f"{cpu_kind()}, {os.cpu_count()} cores")
    if args.json:
        with atomic_output(args.json) as f:
            json.dump({"cpu": cpu_kind(), "cores": os.cpu_count(), "file_sentences_per_s": file_rate,
                       "levels": [lv.summary() for lv in levels], "ratios": ratios, "args": vars(args)}, f, indent=1)
    return 1 if any(level.errors for level in levels) else 0


if __name__ == "__main__":
    sys.exit(main())
