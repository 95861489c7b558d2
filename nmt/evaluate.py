"""Scores through sacrebleu's Python API (BLEU, chrF and TER with sacrebleu's defaults and signatures), and
`nmt test`: translating a config's test sets and scoring them.

Lines are read like the `sacrebleu` command line reads them (trailing whitespace and a byte-order mark
stripped), so `nmt score` and `sacrebleu REF -i HYP` print the same numbers; the signature says exactly how
they were computed.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from sacrebleu.metrics import BLEU, CHRF, TER

from nmt.config import Config
from nmt.data.corpus import read_lines, read_pairs, split_files
from nmt.errors import NMTError
from nmt.outputs import atomic_output, check_outputs


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


def evaluate_tests(cfg: Config, checkpoint: str | None = None) -> dict:
    """Translate every test set of `cfg` with `checkpoint` (default EXP/final.pt), decoding as `cfg.decode`
    says, into EXP/test/NAME.hyp, and write the scores to EXP/results.json."""
    from nmt.checkpoint import load_trained_model
    from nmt.precision import describe_device, dtype_name, resolve_device, resolve_dtype
    from nmt.translator import Translator

    exp = Path(cfg.exp_dir)
    checkpoint = checkpoint or str(exp / "final.pt")
    results_path = exp / "results.json"
    outputs = [results_path, *(exp / "test" / f"{name}.hyp" for name in cfg.data.test)]
    inputs = [checkpoint, *(f for spec in cfg.data.test.values() for f in split_files(spec))]
    check_outputs(outputs, inputs)
    device = resolve_device(cfg.train.device)
    trained = load_trained_model(checkpoint)
    trained.model.to(device)
    translator = Translator([trained], cfg.decode, device, resolve_dtype(cfg.train.dtype, device))
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    (exp / "test").mkdir(parents=True, exist_ok=True)
    for name, spec in cfg.data.test.items():
        sources, references = read_pairs(spec, cfg.data.src_lang, cfg.data.tgt_lang)
        started = time.time()
        texts = [hyps[0].text for hyps in translator.translate_lines(sources)]
        seconds = time.time() - started
        with atomic_output(exp / "test" / f"{name}.hyp") as f:
            f.writelines(t + "\n" for t in texts)
        scores = score_corpus(texts, references)
        exact = sum(h == r for h, r in zip(texts, references)) / max(len(references), 1)
        results[name] = {"bleu": round(scores["bleu"], 2), "chrf": round(scores["chrf"], 2),
                         "ter": round(scores["ter"], 2), "exact_match": round(exact, 4),
                         "beam": cfg.decode.beam, "sentences": len(texts),
                         "decode_seconds": round(seconds, 1), "dtype": dtype_name(translator.dtype),
                         "device": describe_device(device),
                         "checkpoint": checkpoint, "signature": scores["signature"]}
    with atomic_output(results_path) as f:
        f.write(json.dumps(results, indent=2) + "\n")
    return results
