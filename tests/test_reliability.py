"""Issue 7: a killed or signalled training resumes to the parameters of an uninterrupted run, and bad input to
every command is a one-line user error (exit 2), never a traceback.

Kill points are deterministic: `nmt train` runs in a real process through FAULT_RUNNER, which sends the
process a real signal (SIGKILL, SIGTERM or SIGINT) from inside at a chosen point. No production code knows
about it. The table in docs/RELIABILITY.md lists every case here.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from nmt.train import train
from training_fixtures import (load, max_difference, process_env, run_process, tiny_train_dict, to_config,
                               write_yaml)

N_UPDATES = 12

FAULT_RUNNER = r'''
"""`nmt ARGS`, with the signal FAULT_AT=<stage>:<update>:<SIGNAL> sent to itself at one point of training."""
import io, os, signal, sys
import torch
import nmt.train as train
from nmt.cli import main

stage, update, name = os.environ["FAULT_AT"].split(":")
update, signum = int(update), getattr(signal, name)

fired = []

def fire():  # once: a second SIGTERM/SIGINT means "stop now, do not save"
    if not fired:
        fired.append(True)
        os.kill(os.getpid(), signum)

if stage == "between-updates":  # `update` updates done, the next one about to start
    train_update = train.Trainer.train_update
    def patched(self, group):
        if self.progress.update == update:
            fire()
        return train_update(self, group)
    train.Trainer.train_update = patched
elif stage == "validation":  # the dev set scored after `update`, nothing logged or saved yet
    validate = train.Trainer.validate
    def patched(self):
        record = validate(self)
        if self.progress.update == update:
            fire()
        return record
    train.Trainer.validate = patched
elif stage in ("checkpoint-write", "final-write"):  # half of the temporary file of last.pt (final.pt) written
    real_save = torch.save
    target = ".last.pt.tmp" if stage == "checkpoint-write" else ".final.pt.tmp"
    def patched(obj, f, *args, **kwargs):
        if target in str(getattr(f, "name", "")) and (
                stage == "final-write" or obj["progress"]["update"] == update):
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            f.flush()
            os.fsync(f.fileno())
            fire()  # SIGKILL ends here; a caught signal lets the write finish
            f.seek(0)
            f.truncate()
        return real_save(obj, f, *args, **kwargs)
    torch.save = patched
sys.exit(main(sys.argv[1:]))
'''


def reliability_dict(corpus, exp: Path) -> dict:
    """Dropout 0.3 (RNG restoration matters), dev BLEU on (validation decodes), best 2 kept."""
    return tiny_train_dict(corpus, exp, train={"valid_bleu": True})


@pytest.fixture(scope="module")
def reference(tiny_corpus, tmp_path_factory) -> Path:
    exp = tmp_path_factory.mktemp("uninterrupted") / "exp"
    assert train(to_config(reliability_dict(tiny_corpus, exp)), run_tests=False) == 0
    return exp


def logged_updates(exp: Path) -> list[int]:
    lines = (exp / "metrics.jsonl").read_text().splitlines()
    return [r["update"] for r in map(json.loads, lines) if r["kind"] == "train"]


def run_with_fault(config: Path, fault: str, cwd: Path):
    return run_process(["train", config, "--no-test"], cwd=cwd, env={"FAULT_AT": fault}, code=FAULT_RUNNER)


def assert_resumes_to_the_reference(run_cli, config: Path, exp: Path, reference: Path, resumed_from: int,
                                    logged_before: list[int]) -> None:
    """Resume; the run continues right after update `resumed_from` (nothing repeated or lost beyond that
    checkpoint) and ends where the uninterrupted run ended."""
    result = run_cli("train", config, "--no-test", "--resume")
    assert result.code == 0, result.err
    assert logged_updates(exp) == logged_before + list(range(resumed_from + 1, N_UPDATES + 1))
    assert max_difference(load(exp / "checkpoints" / "last.pt")["model"],
                          load(reference / "checkpoints" / "last.pt")["model"]) <= 1e-6
    assert max_difference(load(exp / "final.pt")["model"], load(reference / "final.pt")["model"]) <= 1e-6
    assert not list(exp.rglob(".*.tmp*")), "temporary files of the killed write are cleaned up"


# ----------------------------------------------------------------------------------------------- interruption


@pytest.mark.parametrize("fault,checkpoint_update", [
    ("between-updates:6:SIGKILL", 4),
    ("validation:8:SIGKILL", 4),
    ("checkpoint-write:8:SIGKILL", 4),  # last.pt of update 4 survives the half-written replacement
    ("checkpoint-write:4:SIGKILL", 4),  # the first last.pt dies mid-write: best_u0000004.pt is the fallback
    ("final-write:0:SIGKILL", N_UPDATES),  # training done, final.pt half-written
])
def test_sigkill_then_resume_equals_the_uninterrupted_run(tiny_corpus, reference, tmp_path, run_cli, fault,
                                                          checkpoint_update):
    exp = tmp_path / "exp"
    config = write_yaml(reliability_dict(tiny_corpus, exp), tmp_path / "config.yaml")
    killed = run_with_fault(config, fault, tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    if "write" in fault:
        assert list(exp.rglob(".*.tmp*")), "it should have died in the middle of a write"
    checkpoints = exp / "checkpoints"
    first_write = fault == "checkpoint-write:4:SIGKILL"  # killed while the first last.pt was being written
    assert (checkpoints / "last.pt").exists() != first_write
    newest = checkpoints / ("best_u0000004.pt" if first_write else "last.pt")
    progress = load(newest)["progress"]
    assert progress["update"] == checkpoint_update
    assert progress["finished"] == (checkpoint_update == N_UPDATES)  # only when killed writing final.pt
    logged = logged_updates(exp)
    assert logged == list(range(1, len(logged) + 1)) and len(logged) >= checkpoint_update
    assert_resumes_to_the_reference(run_cli, config, exp, reference, checkpoint_update, logged)


@pytest.mark.parametrize("fault,saved_update", [
    ("between-updates:6:SIGTERM", 7),  # the update in flight completes, then it saves and exits
    ("validation:8:SIGINT", 8),
    ("checkpoint-write:8:SIGTERM", 8),  # the write in progress completes first
])
def test_sigterm_and_sigint_save_first(tiny_corpus, reference, tmp_path, run_cli, fault, saved_update):
    exp = tmp_path / "exp"
    config = write_yaml(reliability_dict(tiny_corpus, exp), tmp_path / "config.yaml")
    stopped = run_with_fault(config, fault, tmp_path)
    signum = getattr(signal, fault.rsplit(":", 1)[1])
    assert stopped.returncode == 128 + signum, stopped.stderr[-2000:]
    assert "continue with: nmt train CONFIG --resume" in stopped.stderr
    assert "Traceback" not in stopped.stderr
    progress = load(exp / "checkpoints" / "last.pt")["progress"]
    assert progress["update"] == saved_update and not progress["finished"]
    assert not (exp / "final.pt").exists()
    logged = logged_updates(exp)
    assert logged == list(range(1, saved_update + 1))
    assert_resumes_to_the_reference(run_cli, config, exp, reference, saved_update, logged)


# ----------------------------------------------------------------------------------------------- bad input


JUNK = random.Random(0).randbytes(4096)
LONG_LINE = " ".join(f"w{i % 97}x" for i in range(30_000))[:100_000]


@dataclass
class Workspace:
    """A folder with a good corpus, config and checkpoint, in which each case spoils one thing."""

    root: Path
    corpus: object
    run: Path  # a finished experiment folder (read-only)

    def file(self, name: str, data: bytes | str) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        return path

    def lines(self, split: str, lang: str) -> list[str]:
        return [s if lang == "de" else t for s, t in getattr(self.corpus, split)]

    def split(self, split: str, de: bytes | str | None = None, en: bytes | str | None = None) -> dict:
        """A copy of `split` as bad_<split>.de/.en, either side replaced by `de`/`en`."""
        paths = {}
        for key, lang, data in (("src", "de", de), ("tgt", "en", en)):
            if data is None:
                data = "".join(line + "\n" for line in self.lines(split, lang))
            paths[key] = str(self.file(f"bad_{split}.{lang}", data))
        return paths

    def config(self, **data: dict) -> Path:
        raw = tiny_train_dict(self.corpus, self.root / "exp")
        raw["data"].update(data)
        return write_yaml(raw, self.root / "config.yaml")

    def checkpoint(self, name: str, change) -> Path:
        """final.pt of the finished run, changed by `change(payload)`."""
        payload = load(self.run / "final.pt")
        change(payload)
        torch.save(payload, self.root / name)
        return self.root / name

    def code_checkpoint(self, name: str) -> Path:
        """final.pt of the finished run with an object whose unpickling would create `pwned` (`open(..., "w")`)."""
        payload = load(self.run / "final.pt")
        payload["config"]["note"] = Pwned(str(self.root / "pwned"))
        torch.save(payload, self.root / name)
        return self.root / name

    def other_shortlist(self) -> Path:
        """A well-formed shortlist of other SentencePiece models than the finished run's."""
        import numpy as np

        from nmt.shortlist import Shortlist

        Shortlist(np.zeros(121, np.int64), np.zeros(0, np.int64), np.array([3]), "x", "y").save(self.root / "other.npz")
        return self.root / "other.npz"

    def truncated(self, name: str) -> Path:
        return self.file(name, (self.run / "final.pt").read_bytes()[:5000])

    def resumable(self, change=None) -> Path:
        """The config of a copy of the finished run, its checkpoints changed by `change(payload)`."""
        shutil.copytree(self.run, self.root / "exp")
        for path in (self.root / "exp" / "checkpoints").glob("*.pt"):
            if change is not None:
                payload = load(path)
                change(payload)
                torch.save(payload, path)
        return self.config()

    @property
    def good(self) -> Path:
        return self.run / "final.pt"

    @property
    def source(self) -> Path:
        return self.corpus.path("test", "de")


class Pwned:
    """Unpickled, this would be `open(path, "w")`: a file appearing proves that loading ran the pickle's code."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def misaligned(ws: Workspace, split: str) -> str:
    return "".join(line + "\n" for line in ws.lines(split, "en")[:-1])


def misaligned_case(command: str, split: str):
    """A case: `command` on a config whose `split` has one English line too few; the line names both files and
    their line counts."""

    def build(ws: Workspace) -> tuple[list, list[str]]:
        files = ws.split(split, en=misaligned(ws, split))
        config = ws.config(**{split: {"tiny": files} if split == "test" else files})
        n = len(ws.lines(split, "de"))
        argv = [command, config, *(["-c", ws.good] if command == "test" else [])]
        return argv, [f"misaligned corpus: {files['src']} has {n} lines but {files['tgt']} has {n - 1}"]

    return build


def first_invalid_line(data: bytes) -> int:
    """The 1-based number of the first line of `data` that is not UTF-8."""
    return next(n for n, line in enumerate(data.split(b"\n"), start=1) if not _is_utf8(line))


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def invalid_utf8(ws: Workspace, split: str) -> bytes:
    lines = [line.encode() for line in ws.lines(split, "en")]
    lines[2] = b"caf\xe9 " + lines[2]  # Latin-1, not UTF-8
    return b"".join(line + b"\n" for line in lines)


def with_long_line(ws: Workspace, split: str, lang: str, at: int) -> str:
    lines = ws.lines(split, lang)
    lines[at] = LONG_LINE
    return "".join(line + "\n" for line in lines)


def other_vocabulary(payload: dict) -> None:
    from nmt.config import SubwordConfig
    from nmt.data.subword import train_subword

    spm = train_subword([f"wort{i} satz{i % 7}" for i in range(200)], SubwordConfig(vocab_size=50))
    payload["spm"] = {"src": spm, "tgt": spm}


def bad_format(payload: dict) -> None:
    payload["format"] = 999


def other_model(payload: dict) -> None:
    payload["model"] = {k: v[..., :1] for k, v in payload["model"].items()}


def translate_option_case(*options: str, says: str):
    """A case: `nmt translate` of a good checkpoint and input with `options`; the line says `says`."""
    return lambda ws: (["translate", "-c", ws.good, "-i", ws.source, *options], [says])


# case -> builder(ws) -> (argv, fragments the one error line must contain)
BAD_INPUT = {
    # ---- configs (prepare and test read them the same way)
    "train: config file missing": lambda ws: (
        ["train", ws.root / "nope.yaml"], ["config file not found", "nope.yaml"]),
    "train: config not YAML": lambda ws: (
        ["train", ws.file("c.yaml", "train: [1, 2\nmodel: x\n")], ["c.yaml", "not valid YAML"]),
    "train: config binary junk": lambda ws: (
        ["train", ws.file("c.yaml", JUNK)], ["c.yaml", "not valid YAML"]),
    "train: config unknown key": lambda ws: (
        ["train", ws.file("c.yaml", "train:\n  lrr: 0.1\n")],
        ["unknown config key train.lrr; did you mean train.lr?"]),
    "train: config wrong type": lambda ws: (
        ["train", ws.file("c.yaml", "train:\n  lr: fast\n")], ["config key train.lr", "expected a number"]),
    "train: config section not a mapping": lambda ws: (
        ["train", ws.file("c.yaml", "model: 3\n")], ["config key model", "mapping"]),
    "train: override unknown key": lambda ws: (
        ["train", ws.config(), "model.celll=gru"], ["unknown config key model.celll", "model.cell"]),
    "train: override wrong type": lambda ws: (
        ["train", ws.config(), "train.max_updates=many"], ["config key train.max_updates", "integer"]),
    # ---- corpora
    "train: corpus file missing": lambda ws: (
        ["train", ws.config(train={"src": str(ws.root / "gone.de"), "tgt": ws.split("train")["tgt"]})],
        ["file not found", "gone.de"]),
    "train: corpora misaligned": misaligned_case("train", "train"),
    "train: invalid UTF-8": lambda ws: (
        ["train", ws.config(train=ws.split("train", en=invalid_utf8(ws, "train")))],
        ["bad_train.en line 3: invalid UTF-8"]),
    "train: binary junk corpus": lambda ws: (
        ["train", ws.config(train=ws.split("train", de=JUNK))],
        [f"bad_train.de line {first_invalid_line(JUNK)}: invalid UTF-8"]),
    "train: dev set invalid UTF-8": lambda ws: (
        ["train", ws.config(valid=ws.split("valid", en=invalid_utf8(ws, "valid")))],
        ["bad_valid.en line 3: invalid UTF-8"]),
    "train: 100,000-character line in the dev set": lambda ws: (
        ["train", ws.config(valid=ws.split("valid", with_long_line(ws, "valid", "de", 3),
                                           with_long_line(ws, "valid", "en", 3)))],
        ["valid split (", "bad_valid.de", ") line 4: ", " subwords, more than the 1024 a dev sentence may have"]),
    "prepare: corpora misaligned": misaligned_case("prepare", "train"),
    "prepare: invalid UTF-8": lambda ws: (
        ["prepare", ws.config(train=ws.split("train", en=invalid_utf8(ws, "train")))],
        ["bad_train.en line 3: invalid UTF-8"]),
    # ---- checkpoints met by train --resume
    "train --resume: other vocabulary": lambda ws: (
        ["train", ws.resumable(), "data.subword.vocab_size=100", "--resume"],
        [f"{ws.root / 'exp' / 'checkpoints' / 'last.pt'}: cannot resume from it with this config's model and "
         "vocabulary (", "size mismatch"]),
    "train --resume: incompatible format": lambda ws: (
        ["train", ws.resumable(bad_format), "--resume"],
        [f"no usable checkpoint in {ws.root / 'exp' / 'checkpoints'}"]),
    # ---- translate
    "translate: checkpoint missing": lambda ws: (
        ["translate", "-c", ws.root / "nope.pt", "-i", ws.source], [f"checkpoint not found: {ws.root / 'nope.pt'}"]),
    "translate: checkpoint truncated": lambda ws: (
        ["translate", "-c", ws.truncated("t.pt"), "-i", ws.source],
        [f"{ws.root / 't.pt'}: not a readable checkpoint (truncated or corrupt"]),
    "translate: checkpoint is junk": lambda ws: (
        ["translate", "-c", ws.file("j.pt", JUNK), "-i", ws.source],
        [f"{ws.root / 'j.pt'}: not a readable checkpoint"]),
    "translate: checkpoint vocabulary mismatch": lambda ws: (
        ["translate", "-c", ws.checkpoint("v.pt", other_vocabulary), "-i", ws.source],
        [f"{ws.root / 'v.pt'}: model weights do not match its config or SentencePiece model(s)"]),
    "translate: incompatible checkpoint format": lambda ws: (
        ["translate", "-c", ws.checkpoint("f.pt", bad_format), "-i", ws.source],
        [f"{ws.root / 'f.pt'}: checkpoint format 999 is not supported"]),
    "translate: input missing": lambda ws: (
        ["translate", "-c", ws.good, "-i", ws.root / "in.txt"], ["file not found", "in.txt"]),
    "translate: input invalid UTF-8": lambda ws: (
        ["translate", "-c", ws.good, "-i", ws.file("in.txt", invalid_utf8(ws, "test"))],
        ["in.txt line 3: invalid UTF-8"]),
    "translate: input binary junk": lambda ws: (
        ["translate", "-c", ws.good, "-i", ws.file("in.txt", JUNK)],
        [f"in.txt line {first_invalid_line(JUNK)}: invalid UTF-8"]),
    "translate: output folder missing": lambda ws: (
        ["translate", "-c", ws.good, "-i", ws.source, "-o", ws.root / "no" / "out.txt"],
        ["out.txt", "does not exist"]),
    # ---- test
    "test: checkpoint truncated": lambda ws: (
        ["test", ws.config(), "-c", ws.truncated("t.pt")], ["t.pt", "truncated or corrupt"]),
    "test: test set misaligned": misaligned_case("test", "test"),
    # ---- score
    "score: reference missing": lambda ws: (
        ["score", "-r", ws.root / "ref.txt", "-i", ws.source], ["file not found", "ref.txt"]),
    "score: misaligned": lambda ws: (
        ["score", "-r", ws.corpus.path("train", "en"), "-i", ws.corpus.path("test", "en")], ["misaligned files"]),
    "score: invalid UTF-8": lambda ws: (
        ["score", "-r", ws.corpus.path("test", "en"), "-i", ws.file("h.txt", invalid_utf8(ws, "test"))],
        ["h.txt line 3: invalid UTF-8"]),
    "score: empty files": lambda ws: (
        ["score", "-r", ws.file("r.txt", ""), "-i", ws.file("h.txt", "")], ["nothing to score"]),
    # ---- average
    "average: checkpoint missing": lambda ws: (
        ["average", ws.good, ws.root / "nope.pt", "-o", ws.root / "a.pt"], ["checkpoint not found", "nope.pt"]),
    "average: checkpoint is junk": lambda ws: (
        ["average", ws.good, ws.file("j.pt", JUNK), "-o", ws.root / "a.pt"], ["j.pt", "not a readable checkpoint"]),
    "average: different models": lambda ws: (
        ["average", ws.good, ws.checkpoint("o.pt", other_model), "-o", ws.root / "a.pt"],
        ["o.pt", "different models"]),
    # ---- plot
    "plot: not an experiment folder": lambda ws: (["plot", ws.root], ["no metrics file"]),
    "plot: metrics not JSON": lambda ws: (
        ["plot", ws.file("e/metrics.jsonl", '{"kind": "tr\n').parent], ["metrics.jsonl line 1", "not valid JSON"]),
    "plot-attention: file missing": lambda ws: (
        ["plot-attention", ws.root / "a.jsonl", "-o", ws.root / "a.png"],
        [f"alignments file not found: {ws.root / 'a.jsonl'}"]),
    "plot-attention: not an alignment": lambda ws: (
        ["plot-attention", ws.file("a.jsonl", "{}\n"), "-o", ws.root / "a.png"], ["a.jsonl line 1"]),
    # ---- options out of range (issue 15): each names its option
    "translate: --max-len-a -1 --max-len-b -5": translate_option_case(
        "--max-len-a", "-1", "--max-len-b", "-5", says="--max-len-a must be at least 0, got -1.0"),
    "translate: --max-len-a 0 --max-len-b 0": translate_option_case(
        "--max-len-a", "0", "--max-len-b", "0",
        says="--max-len-a 0 and --max-len-b 0 allow outputs shorter than one subword"),
    "translate: --alpha -1": translate_option_case("--alpha", "-1", says="--alpha must be at least 0, got -1.0"),
    "translate: --batch-tokens 0": translate_option_case(
        "--batch-tokens", "0", says="--batch-tokens must be at least 1, got 0"),
    "translate: --threads -1": translate_option_case(
        "--threads", "-1", says="argument --threads: must be at least 0, got -1"),
    "translate: --beam 0": translate_option_case("--beam", "0", says="--beam must be between 1 and 256, got 0"),
    "translate: --beam 5000": translate_option_case(
        "--beam", "5000", says="--beam must be between 1 and 256, got 5000"),
    "translate: --topp 0": translate_option_case(
        "--temperature", "1", "--topp", "0", says="--topp must be greater than 0, got 0.0"),
    "translate: --nbest over --beam": translate_option_case(
        "--beam", "2", "--nbest", "3", says="--nbest 3 needs a beam of at least 3 (--beam is 2)"),
    # ---- outputs that cannot be written (issue 15)
    "translate: output /dev/full": lambda ws: (
        ["translate", "-c", ws.good, "-i", ws.source, "-o", "/dev/full", "-q"],
        ["cannot write /dev/full: No space left on device"]),
    "average: output /dev/full": lambda ws: (
        ["average", ws.good, "-o", "/dev/full"], ["cannot write /dev/full: No space left on device"]),
    "average: output a folder": lambda ws: (
        ["average", ws.good, "-o", ws.root], [f"cannot write {ws.root}: it is a directory; name a file"]),
    "train: exp_dir is a file": lambda ws: (
        ["train", ws.config(), f"exp_dir={ws.file('taken', 'x')}"],
        [f"exp_dir {ws.root / 'taken'} is a file, not a folder"]),
    "train: exp_dir inside a file": lambda ws: (
        ["train", ws.config(), f"exp_dir={ws.file('taken', 'x')}/exp"],
        [f"exp_dir {ws.root / 'taken' / 'exp'}: cannot write the experiment folder (Not a directory)"]),
    "train: train.lr=-0.001": lambda ws: (
        ["train", ws.config(), "train.lr=-0.001"], ["config key train.lr: must be at least 0, got -0.001"]),
    "train: train.max_tokens=0": lambda ws: (
        ["train", ws.config(), "train.max_tokens=0"], ["config key train.max_tokens: must be at least 1, got 0"]),
    # ---- shortlists (issue 18): untrusted files too
    "translate: shortlist missing": lambda ws: (
        ["translate", "-c", ws.good, "-i", ws.source, "--shortlist", ws.root / "sl.npz"],
        [f"shortlist not found: {ws.root / 'sl.npz'}"]),
    "translate: shortlist is junk": lambda ws: (
        ["translate", "-c", ws.good, "-i", ws.source, "--shortlist", ws.file("sl.npz", JUNK)],
        [f"{ws.root / 'sl.npz'}: not a shortlist written by nmt shortlist"]),
    "translate: shortlist of other vocabularies": lambda ws: (
        ["translate", "-c", ws.good, "-i", ws.source, "--shortlist", ws.other_shortlist()],
        [f"{ws.root / 'other.npz'}: this shortlist was built for other SentencePiece models"]),
    # ---- untrusted checkpoints (issue 16)
    "translate: checkpoint whose pickle runs code": lambda ws: (
        ["translate", "-c", ws.code_checkpoint("evil.pt"), "-i", ws.source],
        [f"{ws.root / 'evil.pt'}: refused: the checkpoint asks to run io.open"]),
}

# Bad input whose message must name the data split or file (these were once known gaps).
TRAINING_DATA = ["data.train (", "bad_train.de | ", "bad_train.en): "]  # the split and its files
NO_SENTENCE = "the training data has no non-empty sentence"
NAMED_BAD_INPUT = {
    "train: config empty": (
        lambda ws: (["train", ws.file("c.yaml", "")],
                    ["data.train: a corpus split needs exactly one of src+tgt, tsv or hf"]),
        "nmt/data/corpus.py: 'a corpus split needs exactly one of ...' does not name the split"),
    "train: empty corpus": (
        lambda ws: (["train", ws.config(train=ws.split("train", "", ""))], TRAINING_DATA + [NO_SENTENCE]),
        "nmt/data/subword.py: 'the training data has no non-empty sentence' names no file"),
    "train: corpus of empty lines": (
        lambda ws: (["train", ws.config(train=ws.split("train", "\n" * 50, "\n" * 50))],
                    TRAINING_DATA + [NO_SENTENCE]),
        "nmt/data/subword.py: 'the training data has no non-empty sentence' names no file"),
    "train: corpus of one 100,000-character line": (
        lambda ws: (["train", ws.config(train=ws.split("train", LONG_LINE + "\n", LONG_LINE + "\n"))],
                    TRAINING_DATA + ["SentencePiece training failed: "]),
        "nmt/data/subword.py: SentencePiece's internal error names no file"),
    "plot: metrics binary junk": (
        lambda ws: (["plot", ws.file("e/metrics.jsonl", JUNK[:100].replace(b"\n", b" ")).parent],
                    ["metrics.jsonl line 1: invalid UTF-8"]),
        "nmt/plot.py read_metrics: invalid UTF-8 escapes as UnicodeDecodeError (a traceback)"),
}


@pytest.fixture(scope="module")
def finished_run(tiny_corpus, tmp_path_factory) -> Path:
    exp = tmp_path_factory.mktemp("finished") / "exp"
    raw = tiny_train_dict(tiny_corpus, exp, train={"max_updates": 4})
    assert train(to_config(raw), run_tests=False) == 0
    return exp


@pytest.fixture
def workspace(tmp_path, tiny_corpus, finished_run, monkeypatch) -> Workspace:
    monkeypatch.chdir(tmp_path)  # a config without exp_dir writes into ./exp/default
    return Workspace(tmp_path, tiny_corpus, finished_run)


@dataclass
class Shown:
    code: int
    err: str


def as_shown(result) -> Shown:
    """The stderr lines a terminal shows: a progress bar that erased itself with carriage returns (`nmt
    translate`'s tqdm, leave=False) is not a line."""
    shown = [line.rsplit("\r", 1)[-1] for line in result.err.split("\n")]
    return Shown(result.code, "\n".join(line for line in shown if line.strip()))


def _run_case(run_cli, argv: list) -> object:
    if argv[0] == "train" and "--no-test" not in argv:
        argv = [*argv, "--no-test"]
    return run_cli(*argv)


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_is_one_line_naming_it(workspace, run_cli, user_error, case):
    argv, fragments = BAD_INPUT[case](workspace)
    user_error(as_shown(_run_case(run_cli, argv)), *fragments)


@pytest.mark.parametrize("case", sorted(NAMED_BAD_INPUT))
def test_bad_input_names_the_split_or_file(workspace, run_cli, user_error, case):
    argv, fragments = NAMED_BAD_INPUT[case][0](workspace)
    result = as_shown(_run_case(run_cli, argv))
    user_error(result)  # exit 2, one line, no traceback: this part holds for the data cases already
    user_error(result, *fragments)


@pytest.mark.parametrize("argv", [
    ["train", "{ws}/config.yaml", "train.lr=fast"],
    ["translate", "-c", "{ws}/junk.pt", "-i", "{ws}/junk.pt"],
], ids=["train", "translate"])
def test_a_real_process_prints_one_error_line_and_no_traceback(tmp_path, tiny_corpus, argv):
    write_yaml(tiny_train_dict(tiny_corpus, tmp_path / "exp"), tmp_path / "config.yaml")
    (tmp_path / "junk.pt").write_bytes(JUNK)
    done = run_process([a.format(ws=tmp_path) for a in argv], cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and done.stdout == ""
    errors = [line for line in done.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1 and errors[0].startswith(f"nmt {argv[0]}: error: ")


# ----------------------------------------------------------------------------------------------- not errors


def test_translate_keeps_empty_and_over_long_lines(workspace, run_cli, caplog):
    """Empty lines give empty lines; a 100,000-character line is cut to 1024 subwords with a warning naming the
    line and the limit, and translated: never dropped."""
    caplog.set_level("WARNING")
    source = workspace.file("in.txt", "\n\n" + LONG_LINE + "\n\n")
    out, alignments = workspace.root / "out.txt", workspace.root / "att.jsonl"
    result = run_cli("translate", "-c", workspace.good, "-i", source, "-o", out, "--alignments", alignments,
                     "--beam", "1", "--max-len-b", "3", "--max-len-a", "0", "-q")
    assert result.code == 0, result.err
    lines = out.read_text().split("\n")
    assert len(lines) == 5 and lines[0] == lines[1] == lines[3] == lines[4] == ""  # 4 lines in, 4 out
    assert lines[2] != ""  # the long line is translated (decode.min_len is 1), not left empty
    (warning,) = [r.message for r in caplog.records if "truncated" in r.message]
    subwords = re.fullmatch(r"line 3: (\d+) subwords, truncated to the model's limit of 1024", warning)
    assert subwords and int(subwords[1]) > 1024, warning
    seen = json.loads(alignments.read_text(encoding="utf-8").splitlines()[2])["source"]
    assert len(seen) == 1024 + 1  # the subwords the model was given, and </s>
    empty = workspace.file("empty.txt", "")
    assert run_cli("translate", "-c", workspace.good, "-i", empty, "-o", out, "-q").code == 0
    assert out.read_text() == ""


def test_a_100000_character_line_in_the_training_data_is_dropped_and_reported(workspace, caplog):
    train_split = workspace.split("train", with_long_line(workspace, "train", "de", 10),
                                  with_long_line(workspace, "train", "en", 10))
    raw = tiny_train_dict(workspace.corpus, workspace.root / "exp", train={"max_updates": 2})
    raw["data"]["train"] = train_split
    caplog.set_level("INFO")
    assert train(to_config(raw), run_tests=False) == 0
    n = len(workspace.corpus.train)
    assert f"kept {n - 1} of {n} pairs; dropped 1 longer than 100 subwords" in caplog.text


# ----------------------------------------------------------------------------------------------- issue 15: no data lost


def test_a_checkpoint_whose_pickle_runs_code_runs_nothing(workspace, run_cli, user_error):
    """The crafted checkpoint would create a file if unpickled with torch's defaults; it is refused first."""
    evil = workspace.code_checkpoint("evil.pt")
    unrestricted = torch.load(evil, weights_only=False)  # there the pickle does run code: the test is real
    unrestricted["config"]["note"].close()
    assert (workspace.root / "pwned").exists()
    (workspace.root / "pwned").unlink()
    for argv in (["translate", "-c", evil, "-i", workspace.source], ["average", evil, "-o", workspace.root / "a.pt"],
                 ["test", workspace.config(), "-c", evil]):
        user_error(as_shown(run_cli(*argv)), f"{evil}: refused: the checkpoint asks to run io.open")
    assert not (workspace.root / "pwned").exists()


def test_a_failed_translation_leaves_the_previous_output_as_it_was(workspace, run_cli, user_error):
    lines = [line.encode() for line in workspace.lines("test", "de")]
    lines[3] = b"caf\xe9 " + lines[3]
    bad = workspace.file("bad.de", b"".join(line + b"\n" for line in lines))
    keep = workspace.file("keep.en", "a previous run's translation\n")
    user_error(as_shown(run_cli("translate", "-c", workspace.good, "-i", bad, "-o", keep, "-q")),
               "bad.de line 4: invalid UTF-8")
    assert keep.read_text() == "a previous run's translation\n"
    assert sorted(p.name for p in workspace.root.iterdir() if ".tmp" in p.name) == []


def test_a_named_pipe_is_read_once_and_translated_whole(workspace, run_cli):
    import os
    import threading

    expected_out = workspace.root / "expected.en"
    assert run_cli("translate", "-c", workspace.good, "-i", workspace.source, "-o", expected_out, "-q").code == 0
    fifo = workspace.root / "in.fifo"
    os.mkfifo(fifo)
    data = workspace.source.read_bytes()
    writer = threading.Thread(target=lambda: fifo.write_bytes(data), daemon=True)
    writer.start()
    out = workspace.root / "out.en"
    assert run_cli("translate", "-c", workspace.good, "-i", fifo, "-o", out, "-q").code == 0
    writer.join(timeout=30)
    assert out.read_text() == expected_out.read_text() and out.read_text().count("\n") == data.count(b"\n") > 0


def test_a_pipe_named_as_the_input_file_is_read_once(workspace):
    """`-i <(cat in.de)` and `-i /dev/stdin` name a pipe: it must not be read once to count and once to
    translate (that wrote 0 lines)."""
    done = run_process(["translate", "-c", workspace.good, "-i", "/dev/stdin", "-q", "--beam", "1"],
                       cwd=workspace.root, stdin=workspace.source.read_text())
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == len(workspace.lines("test", "de"))


def test_score_reads_a_byte_order_mark_as_nmt_translate_does(workspace, run_cli):
    text = workspace.source.read_text()
    plain, with_bom = workspace.file("plain.txt", text), workspace.file("bom.txt", "\ufeff" + text)
    scores = json.loads(run_cli("score", "-r", plain, "-i", with_bom, "--json").out)
    assert scores["bleu"] == pytest.approx(100.0) and scores["chrf"] == pytest.approx(100.0)


def test_stdout_on_a_full_disk_is_one_line(workspace):
    with open("/dev/full", "w") as full:
        done = run_process(["translate", "-c", workspace.good, "-i", workspace.source, "-q"], cwd=workspace.root,
                           stdout=full)
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["nmt translate: error: cannot write standard output: No space left on device"]


def test_settings_that_train_nothing_useful_are_warned_about(workspace, run_cli, caplog):
    config = workspace.config()
    with caplog.at_level(logging.WARNING, logger="nmt.train"):
        result = run_cli("train", config, "train.lr=0", "train.max_tokens=12", "train.max_updates=2", "--no-test")
    assert result.code == 0, result.err
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "train.lr is 0: the parameters will not change" in warnings
    alone = [w for w in warnings if "longer than train.max_tokens (12 subwords" in w]
    assert len(alone) == 1 and re.match(r"\d+ training sentences are longer", alone[0])


def _translate_lines_as_they_come(workspace, extra: list) -> subprocess.Popen:
    """`nmt translate` reading a pipe, in a real process, for the parent to feed line by line and interrupt.

    SIGINT starts at its default in the child, as in a shell at a terminal: a test run started in the background
    of a non-interactive shell inherits SIGINT ignored, and Python then never raises KeyboardInterrupt."""
    return subprocess.Popen([sys.executable, "-m", "nmt", "translate", "-c", str(workspace.good), "-q", "--beam", "1",
                             *map(str, extra)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=workspace.root, env=process_env(),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _readline_within(stream, seconds: float) -> str:
    """The next line of a pipe, or AssertionError when none comes in time (a hang would stall the suite)."""
    import select

    if not select.select([stream], [], [], seconds)[0]:
        raise AssertionError(f"no line within {seconds} s")
    return stream.readline()


def test_ctrl_c_keeps_what_stdout_got_and_says_so(workspace):
    lines = workspace.lines("test", "de")[:3]
    process = _translate_lines_as_they_come(workspace, [])
    try:
        got = []
        for line in lines:  # each line is translated as soon as it arrives, before the next one is sent
            process.stdin.write(line + "\n")
            process.stdin.flush()
            got.append(_readline_within(process.stdout, 60))
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130
    assert all(g.endswith("\n") for g in got) and out == ""
    assert "interrupted after 3 translated lines: the first 3 lines were written" in err
    assert err.splitlines()[-1] == "nmt translate: interrupted"


def test_ctrl_c_leaves_the_output_file_as_it_was(workspace):
    out = workspace.file("out.en", "a previous run's translation\n")
    process = _translate_lines_as_they_come(workspace, ["-o", out])
    try:
        for line in workspace.lines("test", "de")[:3]:
            process.stdin.write(line + "\n")
            process.stdin.flush()
        deadline = time.time() + 60
        while time.time() < deadline and not any(
                p.read_text().count("\n") == 3 for p in workspace.root.glob(".out.en.tmp*")):
            time.sleep(0.05)  # poll the temporary file until the three lines are in it
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130
    assert f"interrupted after 3 translated lines: {out} is left as it was" in err
    assert out.read_text() == "a previous run's translation\n"
    assert list(workspace.root.glob(".out.en.tmp*")) == []
