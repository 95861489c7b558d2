"""`nmt.load(...).translate(...)`: three lines from a checkpoint to translations, the same as the command
line's (the Translator it returns is tested in test_translator.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import nmt
from nmt.cli import main
from translation_fixtures import make_checkpoint, synthetic_sentences


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("hub") / "model.pt", seed=4)


def test_hub_translates_like_the_command_line(checkpoint: Path, tmp_path: Path) -> None:
    sentences = synthetic_sentences(6, seed=11) + [""]
    (tmp_path / "in.txt").write_text("\n".join(sentences) + "\n", encoding="utf-8")
    assert main(["translate", "-c", str(checkpoint), "-i", str(tmp_path / "in.txt"), "-o", str(tmp_path / "out.txt"),
                 "-q", "--device", "cpu", "--dtype", "fp32", "--beam", "2"]) == 0
    model = nmt.load(checkpoint, device="cpu", dtype="fp32", beam=2)
    assert model.translate(sentences) == (tmp_path / "out.txt").read_text(encoding="utf-8").split("\n")[:-1]
    assert model.translate([]) == []


def test_import_nmt_stays_cheap() -> None:
    """`import nmt` must not import torch (prepare and the CLI's startup stay fast); `nmt.load` does."""

    def torch_imported(code: str) -> str:
        return subprocess.run([sys.executable, "-c", f"import sys, nmt; {code}; print('torch' in sys.modules)"],
                              capture_output=True, text=True, check=True).stdout.strip()

    assert torch_imported("pass") == "False"
    assert torch_imported("assert callable(nmt.load)") == "True"
