"""Generate the toy task: reverse a sequence of random symbols. Nothing is committed; run.sh makes it."""

from __future__ import annotations

import argparse
import random
from pathlib import Path

SYMBOLS = [chr(c) for c in range(ord("a"), ord("t") + 1)]  # 20 symbols


def write_split(folder: Path, name: str, n: int, rng: random.Random, min_len: int, max_len: int) -> None:
    with open(folder / f"{name}.src", "w") as src, open(folder / f"{name}.tgt", "w") as tgt:
        for _ in range(n):
            seq = [rng.choice(SYMBOLS) for _ in range(rng.randint(min_len, max_len))]
            src.write(" ".join(seq) + "\n")
            tgt.write(" ".join(reversed(seq)) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", help="output folder")
    parser.add_argument("--train", type=int, default=20000)
    parser.add_argument("--valid", type=int, default=500)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--min-len", type=int, default=3)
    parser.add_argument("--max-len", type=int, default=12)
    parser.add_argument("--train-large", type=int, default=100000,
                        help="sequences of train_large, the training set of the model without attention")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    for name, n in (("train", args.train), ("valid", args.valid), ("test", args.test)):
        write_split(folder, name, n, rng, args.min_len, args.max_len)
    # Without attention a model memorises 20,000 sequences (training loss 0.001 against 0.010 on valid) before it
    # has learnt to reverse. Its own, larger set comes from a second generator, so the files above stay the same.
    write_split(folder, "train_large", args.train_large, random.Random(args.seed + 1), args.min_len, args.max_len)


if __name__ == "__main__":
    main()
