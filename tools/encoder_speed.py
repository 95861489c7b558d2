#!/usr/bin/env python
"""The decoding encoder against torch's packed LSTM, side by side in one run: milliseconds per call for a few
sentence counts, and how many sentences translate differently alone than inside the file's batches.

    NMT_DATA_DIR=../shared/data .venv/bin/python tools/encoder_speed.py -c exp/demo/final.pt
    NMT_DATA_DIR=../shared/data .venv/bin/python tools/encoder_speed.py -c exp/demo/final.pt --dtype fp32

Why: `nmt.model.encoder` runs decoding's encoder as oneDNN calls of a fixed number of sentences, so that a
sentence's states do not depend on its batch; torch's own LSTM (`Encoder._packed`, what training runs) hands a
batch of one length to oneDNN and any other to its step-by-step code. The timings are on one thread, the encoder
alone, on the first N test2016 sentences. `--alone N` compares each of the first N sentences' encoder states
alone and in length-sorted batches, for both paths, then translates each alone (one thread) and compares it with
the whole file's translation (`--threads` threads).
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nmt  # noqa: E402
import nmt.model.encoder as encoder_module  # noqa: E402
from nmt.data.collate import pad_sources  # noqa: E402
from nmt.precision import autocast, cpu_kind  # noqa: E402


def mean_ms(call, repeats: int) -> float:
    call()  # warm-up: oneDNN builds its primitives on the first call of a shape
    start = time.perf_counter()
    for _ in range(repeats):
        call()
    return (time.perf_counter() - start) / repeats * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--checkpoint", required=True)
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on a CPU with AVX512-BF16), fp32 or bf16")
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 2, 4, 16, 64])
    parser.add_argument("--alone", type=int, default=300, help="sentences translated alone (0: skip)")
    parser.add_argument("--threads", type=int, default=2, help="threads for the file's translation")
    args = parser.parse_args()

    translator = nmt.load(args.checkpoint, dtype=args.dtype)
    path = Path(os.environ.get("NMT_DATA_DIR", "../shared/data")) / "multi30k" / "test2016.de.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f]
    ids = translator.encode(lines)
    encoder = translator.models[0].encoder
    print(f"CPU: {cpu_kind()}; dtype {args.dtype} -> {translator.dtype}; encoder timings on 1 thread")

    torch.set_num_threads(1)
    print(f"{'sentences':>9} {'oneDNN ms':>10} {'packed ms':>10} {'packed / oneDNN':>16}")
    for count in args.counts:
        src, lengths = pad_sources([np.asarray(s, dtype=np.int64) for s in ids[:count]])
        repeats = max(5, 300 // count)
        with torch.inference_mode(), autocast(translator.device, translator.dtype):
            embedded = encoder.embedding(src) * encoder.emb_scale
            ours = mean_ms(lambda: encoder_module._directions_apart(encoder.rnn, embedded, lengths), repeats)
            packed = mean_ms(lambda: encoder._packed(embedded, lengths), repeats)
        print(f"{count:>9} {ours:>10.2f} {packed:>10.2f} {packed / ours:>15.2f}x")

    if args.alone:
        states_alone_against_batches(translator, ids[: args.alone])
        alone_against_file(translator, lines, args.alone, args.threads)
    return 0


def states_alone_against_batches(translator: nmt.Translator, ids: list, batch: int = 64) -> None:
    """Sentences whose encoder states alone differ from theirs in length-sorted batches: decoding's encoder
    against torch's packed LSTM (what decoding ran before, and training runs)."""
    encoder = translator.models[0].encoder
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    differ = {"oneDNN encoder (decoding's)": 0, "torch's packed LSTM": 0}
    torch.set_num_threads(1)
    with torch.inference_mode(), autocast(translator.device, translator.dtype):
        for start in range(0, len(order), batch):
            group = order[start:start + batch]
            src, lengths = pad_sources([np.asarray(ids[i], dtype=np.int64) for i in group])
            embedded = encoder.embedding(src) * encoder.emb_scale
            for name, run in (("oneDNN encoder (decoding's)", lambda e, n: encoder_module._directions_apart(
                    encoder.rnn, e, n)), ("torch's packed LSTM", encoder._packed)):
                together = run(embedded, lengths)[0]
                for row, length in enumerate(lengths.tolist()):
                    alone = run(embedded[row:row + 1, :length], lengths[row:row + 1])[0]
                    differ[name] += not torch.equal(alone[0], together[row, :length])
    for name, count in differ.items():
        print(f"{name}: {count} of {len(ids)} sentences get other encoder states alone than in batches of {batch}")


def alone_against_file(translator: nmt.Translator, lines: list[str], count: int, threads: int) -> None:
    """Not a speed comparison (`nmt translate` is, run alternately from two checkouts): the first file warms up."""
    torch.set_num_threads(threads)
    whole = [hyps[0].text for hyps in translator.translate_lines(lines)]
    torch.set_num_threads(1)
    differ = [i for i in range(count) if translator.translate_lines([lines[i]])[0][0].text != whole[i]]
    print(f"translations: of the first {count} sentences, {len(differ)} translate differently alone than in the "
          f"file ({len(lines)} sentences, {threads} threads) {differ[:10]}")


if __name__ == "__main__":
    sys.exit(main())
