"""Scores through sacrebleu's Python API: BLEU, chrF and TER with sacrebleu's defaults and signatures.

Lines are read like the `sacrebleu` command line reads them (trailing whitespace stripped), so `nmt score` and
`sacrebleu REF -i HYP` print the same numbers; the signature says exactly how they were computed.
"""

from __future__ import annotations

import os

from sacrebleu.metrics import BLEU, CHRF, TER

from nmt.data.corpus import read_lines
from nmt.errors import NMTError


def score_corpus(hyps: list[str], refs: list[str]) -> dict:
    """{"bleu", "chrf", "ter": float, "signature": {"bleu", "chrf", "ter": str}} for line-aligned lists."""
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")
    scores: dict = {}
    signatures: dict[str, str] = {}
    for name, metric in (("bleu", BLEU()), ("chrf", CHRF()), ("ter", TER())):
        scores[name] = float(metric.corpus_score(hyps, [refs]).score)
        signatures[name] = str(metric.get_signature())
    scores["signature"] = signatures
    return scores


def corpus_bleu(hyps: list[str], refs: list[str]) -> float:
    """Corpus BLEU (sacrebleu defaults) of detokenised hypotheses, for validation; 0 for no sentences."""
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")
    if not hyps:
        return 0.0
    return float(BLEU().corpus_score(hyps, [refs]).score)


def score_files(ref_path: str | os.PathLike, hyp_path: str | os.PathLike) -> dict:
    """Score a hypothesis file against a reference file (see `score_corpus`)."""
    refs = [line.rstrip() for line in read_lines(ref_path)]
    hyps = [line.rstrip() for line in read_lines(hyp_path)]
    if len(refs) != len(hyps):
        raise NMTError(f"misaligned files: {hyp_path} has {len(hyps)} lines but {ref_path} has {len(refs)}")
    if not refs:
        raise NMTError(f"nothing to score: {ref_path} and {hyp_path} are empty")
    return score_corpus(hyps, refs)


def format_scores(scores: dict) -> str:
    """Human-readable lines: each score with its sacrebleu signature."""
    names = {"bleu": "BLEU", "chrf": "chrF2", "ter": "TER"}
    return "\n".join(f"{names[key]:<5} = {scores[key]:6.2f}  {scores['signature'][key]}" for key in names)
