"""Does `nmt translate` keep its memory flat on a very large input? A benchmark, not a test.

    python tools/decode_memory.py                       # 1,000,000 lines through a tiny random model
    python tools/decode_memory.py --lines 20000         # a quick look
    python tools/decode_memory.py -c exp/demo/final.pt --lines 100000 --beam 5   # a real model (slow)

It writes an input of `--lines` lines (test2016's German side repeated when $NMT_DATA_DIR holds Multi30k,
synthetic sentences otherwise), runs `nmt translate` on it in a subprocess, and samples that process's resident
memory (VmRSS) together with how many output lines it has written (the CLI writes each line once every line
before it is done, into a temporary file beside the output that it renames at the end). A translator that held its input, its outputs or per-sentence state would grow with the lines read;
one that streams stays within a small band after its first chunks. It prints the resident memory at each tenth of
the input, the growth from the first tenth to the end, and as its last line a JSON object with those figures.

The default model is random (a few thousand parameters, greedy, outputs capped at the source length + 2, batches of 16,000 source tokens): its
translations are nonsense, but memory does not depend on their quality, and it decodes a million lines in
minutes on one CPU thread.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def tiny_checkpoint(path: Path, corpus: list[str]) -> None:
    """A random self-contained checkpoint: joint SentencePiece model on `corpus`, a small GRU + Bahdanau model."""
    import torch

    from nmt import CHECKPOINT_FORMAT
    from nmt.checkpoint import save_atomic
    from nmt.config import Config, DecodeConfig, ModelConfig, SubwordConfig, to_dict
    from nmt.data.subword import Subword, train_subword
    from nmt.model.seq2seq import build_model

    spm = train_subword(corpus, SubwordConfig(vocab_size=256))
    vocab = len(Subword(spm))
    model_cfg = ModelConfig(emb_dim=32, enc_hidden=32, dec_hidden=64, attention_dim=32)
    torch.manual_seed(0)
    model = build_model(model_cfg, vocab, vocab, True)
    config = Config(exp_dir=str(path.parent), model=model_cfg,
                    decode=DecodeConfig(beam=1, max_len_a=1.0, max_len_b=2, batch_tokens=16000))
    save_atomic({"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "config": to_dict(config),
                 "spm": {"src": spm, "tgt": spm}}, path)


def source_sentences() -> tuple[list[str], str]:
    data = os.environ.get("NMT_DATA_DIR")
    test = Path(data) / "multi30k" / "test2016.de.gz" if data else None
    if test is not None and test.exists():
        with gzip.open(test, "rt", encoding="utf-8") as f:
            return [line.rstrip("\n") for line in f], str(test)
    rng = random.Random(0)
    words = ["".join(rng.choices("aeioukmnprst", k=rng.randint(2, 7))) for _ in range(500)]
    return [" ".join(rng.choices(words, k=rng.randint(3, 20))) for _ in range(1000)], "synthetic"


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def written_lines(output: Path, pid: int) -> int:
    """Lines written so far: `nmt translate` (process `pid`) writes to `.NAME.tmpPID` beside the output and renames
    it at the end (a temporary file of an earlier, killed run has another PID)."""
    partial = output.with_name(f".{output.name}.tmp{pid}")
    return count_lines(partial) if partial.exists() else count_lines(output)


def count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))
    except OSError:
        return 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lines", type=int, default=1_000_000, help="input lines (default: 1,000,000)")
    p.add_argument("-c", "--checkpoint", default=None, help="a trained checkpoint (default: a tiny random one)")
    p.add_argument("--beam", type=int, default=None, help="beam size (default: the checkpoint's)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for nmt translate (default: 1)")
    p.add_argument("--interval", type=float, default=0.5, help="seconds between samples (default: 0.5)")
    p.add_argument("--workdir", default=None, help="folder for the input and output (default: a temporary one)")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        sentences, origin = source_sentences()
        checkpoint = Path(args.checkpoint) if args.checkpoint else work / "tiny.pt"
        if args.checkpoint is None:
            tiny_checkpoint(checkpoint, sentences)
        source, output = work / "input.txt", work / "output.txt"
        with open(source, "w", encoding="utf-8") as f:
            for i in range(args.lines):
                f.write(sentences[i % len(sentences)] + "\n")
        cmd = [sys.executable, "-m", "nmt", "translate", "-c", str(checkpoint), "-i", str(source), "-o", str(output),
               "--threads", str(args.threads), "-q"]
        if args.beam is not None:
            cmd += ["--beam", str(args.beam)]
        print(f"input: {args.lines:,} lines from {origin}; model: {args.checkpoint or 'tiny random'}", flush=True)
        print("command: " + " ".join(cmd), flush=True)

        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO)
        samples: list[tuple[float, int, float]] = []  # (seconds, lines written, RSS MB)
        while proc.poll() is None:
            rss = rss_mb(proc.pid)
            if rss is not None:
                samples.append((time.perf_counter() - start, written_lines(output, proc.pid), rss))
            time.sleep(args.interval)
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            sys.exit(f"nmt translate failed with exit code {proc.returncode}")
        written = count_lines(output)
        if written != args.lines:
            sys.exit(f"nmt translate wrote {written:,} lines for {args.lines:,}")

    # The resident memory once each tenth of the input has been written: the largest sample up to that point.
    tenths = []
    for k in range(1, 11):
        done = [rss for _, lines, rss in samples if lines <= args.lines * k / 10]
        tenths.append(round(max(done), 1) if done else None)
    peak = max(rss for _, _, rss in samples)
    first = next((t for t in tenths if t is not None), peak)
    growth = peak - first
    print(f"{'written':>10} {'peak RSS MB so far':>20}")
    for k, value in enumerate(tenths, 1):
        print(f"{k * 10:>9}% {value if value is not None else '-':>20}")
    print(f"{args.lines:,} lines in {elapsed:.0f} s ({args.lines / elapsed:,.0f} sentences/s); peak RSS "
          f"{peak:.1f} MB; growth after the first tenth {growth:+.1f} MB ({100 * growth / first:+.1f}%)")
    print(json.dumps({"lines": args.lines, "seconds": round(elapsed, 1), "peak_rss_mb": round(peak, 1),
                      "rss_mb_by_tenth": tenths, "growth_after_first_tenth_mb": round(growth, 1),
                      "source": origin, "model": args.checkpoint or "tiny random"}))


if __name__ == "__main__":
    main()
