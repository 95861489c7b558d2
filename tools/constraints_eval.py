"""Lexically constrained decoding on test2016 (issue #19's acceptance): coverage, BLEU and speed with and without.

The set-up of Post & Vilar (2018, table 3): each sentence gets as constraints reference words that the
unconstrained output lacks, so that a constraint is information the system did not have. The rule was fixed before
any constrained output was looked at and nothing here is tuned on test2016:

  a reference word is a whitespace token with the punctuation around it stripped; it is a candidate when it has
  a letter, is not an English stop word (`STOP_WORDS`, compared lower-cased), does not occur as a word in the
  unconstrained beam output (`occurs`) and can be written with the target vocabulary; candidates are taken
  longest first (by characters, the earlier one on a tie), at most two distinct ones per sentence. A sentence
  without a candidate gets no constraint.

Both decodes use the checkpoint's decoding options with beam 5. Speed: the whole test set is translated
unconstrained and constrained alternately, `--repeats` times each, in this one process (so both share the
machine's state); the best time of each is reported, with the ratio. A constraint is covered when it occurs in
its translation as a word (`occurs`).

    NMT_DATA_DIR=../shared/data .venv/bin/python tools/constraints_eval.py -c exp/demo/final.pt
"""

from __future__ import annotations

import argparse
import json
import os
import re
import string
import subprocess
import sys
import time
from pathlib import Path

import torch

from nmt.constraints import encode_phrase
from nmt.data.corpus import read_lines
from nmt.errors import NMTError
from nmt.evaluate import score_corpus
from nmt.outputs import atomic_output, check_outputs
from nmt.precision import describe_device, dtype_name
from nmt.translator import Translator

STOP_WORDS = frozenset("""a an the and or but of in on at to for from with by as into onto over under up down out off
about above below near through across along around behind between beside against during before after while near
is are was were be been being am has have had do does did will would can could should may might must
this that these those there here it its he she they them his her their him we us our you your i me my
some any each other another one two three four five six seven eight nine ten several many much more most
very just not no so too than then also while who whom whose which what where when why how all both""".split())
_PUNCTUATION = string.punctuation + "“”‘’„«»…–—"


def words(text: str) -> list[str]:
    """Whitespace tokens with the punctuation around them stripped; those left empty are dropped."""
    return [w for w in (token.strip(_PUNCTUATION) for token in text.split()) if w]


def occurs(phrase: str, text: str) -> bool:
    """Whether `phrase` is in `text` as written, with no letter, digit or `_` right before or after it
    (`blond` occurs in `a blond-haired woman`, not in `blonde`)."""
    return re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text) is not None


def choose_constraints(reference: str, output: str, writable) -> list[str]:
    """The rule of the module docstring: up to two reference words the output lacks, longest first."""
    candidates: list[str] = []
    for word in words(reference):
        if (any(c.isalpha() for c in word) and word.lower() not in STOP_WORDS and not occurs(word, output)
                and word not in candidates and writable(word)):
            candidates.append(word)
    return sorted(candidates, key=len, reverse=True)[:2]  # sorted() is stable: the earlier word on a tie


def timed(translator: Translator, sources: list[str], constraints: list[list[str]] | None) -> tuple[float, list]:
    started = time.perf_counter()
    hyps = translator.translate_lines(sources, constraints=constraints)
    return time.perf_counter() - started, [h[0].text for h in hyps]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--checkpoint", required=True)
    parser.add_argument("--data", default=os.path.join(os.environ.get("NMT_DATA_DIR", "../shared/data"), "multi30k"))
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each decode, alternated")
    parser.add_argument("--limit", type=int, default=0, help="first N sentences only (a smoke test)")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    data = [Path(args.data) / "test2016.de.gz", Path(args.data) / "test2016.en.gz"]
    try:  # before minutes of decoding: --json must not name one of the inputs
        check_outputs([args.json], [args.checkpoint, *data])
    except NMTError as err:
        raise SystemExit(f"tools/constraints_eval.py: {err}") from None
    torch.set_num_threads(args.threads)
    translator = Translator.load(args.checkpoint, device="cpu", beam=args.beam)
    sources, references = list(read_lines(data[0])), list(read_lines(data[1]))
    if args.limit:
        sources, references = sources[: args.limit], references[: args.limit]
    translator.translate_lines(sources[:20])  # warm-up, untimed

    def writable(word: str) -> bool:
        try:
            encode_phrase(translator.tgt_spm, word, "")
            return True
        except NMTError:
            return False

    plain_seconds, plain = timed(translator, sources, None)
    constraints = [choose_constraints(r, o, writable) for r, o in zip(references, plain)]
    runs: dict[str, list[float]] = {"unconstrained": [plain_seconds], "constrained": []}
    for repeat in range(args.repeats):
        seconds, constrained = timed(translator, sources, constraints)
        runs["constrained"].append(seconds)
        if repeat + 1 < args.repeats:
            runs["unconstrained"].append(timed(translator, sources, None)[0])
    report = summary(args, translator, sources, references, plain, constrained, constraints, runs)
    print(json.dumps(report, indent=2, ensure_ascii=False))
    if args.json:
        with atomic_output(args.json) as f:
            f.write(json.dumps(report, indent=2, ensure_ascii=False) + "\n")


def summary(args: argparse.Namespace, translator: Translator, sources: list[str], references: list[str],
            plain: list[str], constrained: list[str], constraints: list[list[str]], runs: dict) -> dict:
    asked = [(c, out) for cs, out in zip(constraints, constrained) for c in cs]
    covered = sum(occurs(c, out) for c, out in asked)
    best = {name: min(times) for name, times in runs.items()}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    plain_score = score_corpus(plain, references)
    return {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]), "commit": commit,
        "machine": f"{describe_device(translator.device)}, {torch.get_num_threads()} threads, "
                   f"{dtype_name(translator.dtype)}, {os.cpu_count()} cores",
        "sentences": len(sources), "sentences_with_constraints": sum(bool(c) for c in constraints),
        "constraints": len(asked), "constraint_coverage": covered / max(len(asked), 1),
        "unconstrained_outputs_lacking_a_constraint": sum(not occurs(c, p) for cs, p in zip(constraints, plain)
                                                           for c in cs),
        "bleu_unconstrained": round(plain_score["bleu"], 2),
        "bleu_constrained": round(score_corpus(constrained, references)["bleu"], 2),
        "bleu_signature": plain_score["signature"]["bleu"],
        "seconds": runs, "sentences_per_second": {n: round(len(sources) / s, 2) for n, s in best.items()},
        "constrained_over_unconstrained_time": round(best["constrained"] / best["unconstrained"], 2),
        "examples": [{"source": s, "constraints": c, "unconstrained": p, "constrained": o, "reference": r}
                     for s, c, p, o, r in list(zip(sources, constraints, plain, constrained, references))[:5]],
    }


if __name__ == "__main__":
    main()
