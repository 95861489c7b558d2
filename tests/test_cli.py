"""nmt.cli: every command explains its options; mistakes exit with 2 and one line, never a traceback."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from nmt.cli import build_parser

REPO = Path(__file__).resolve().parents[1]


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


SUBCOMMANDS = sorted(_subcommands())


def test_every_subcommand_the_issue_names_exists():
    assert {"prepare", "train", "translate", "score", "average", "plot"} <= set(SUBCOMMANDS)


def test_top_level_help_lists_every_subcommand(run_cli):
    result = run_cli("--help")
    assert result.code == 0
    for name in SUBCOMMANDS:
        assert name in result.out


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_subcommand_help_explains_every_option(run_cli, name: str):
    result = run_cli(name, "--help")
    assert result.code == 0 and result.err == ""
    for action in _subcommands()[name]._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"nmt {name}: {action.dest} has no help text"
        shown = max(action.option_strings, key=len) if action.option_strings else (action.metavar or action.dest)
        assert shown in result.out, f"nmt {name} --help does not mention {shown}"
        assert " ".join(action.help.split()[:3]) in " ".join(result.out.split())


@pytest.mark.parametrize(
    "args",
    [["no-such-command"], [], ["prepare"], ["translate", "--beam", "wide", "-c", "x.pt"], ["score", "--bogus"]],
    ids=["unknown-subcommand", "no-subcommand", "missing-argument", "bad-int", "unknown-option"],
)
def test_usage_mistakes_exit_2_with_one_line(run_cli, user_error, args):
    user_error(run_cli(*args), "error")


def test_error_message_with_a_line_break_stays_one_line(run_cli, user_error, tmp_path: Path):
    user_error(run_cli("prepare", tmp_path / "two\nlines.yaml"), "config file not found", "two\\nlines.yaml")


def _run_module(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nmt", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})


def test_real_process_user_error_is_one_line_on_stderr(tmp_path: Path):
    """Outside pytest: logging really goes to stderr, and the exit code really is the process's."""
    done = _run_module("prepare", str(tmp_path / "missing.yaml"), "train.lr=0.1", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [f"nmt prepare: error: config file not found: {tmp_path / 'missing.yaml'}"]


def test_real_process_help(tmp_path: Path):
    done = _run_module("--help", cwd=tmp_path)
    assert done.returncode == 0 and "prepare" in done.stdout and done.stderr == ""


@pytest.mark.parametrize("threads, searches, expected", [(2, None, 2), (1, None, 1), (4, None, 2), (2, 1, 1),
                                                         (4, 3, 3)])
def test_serve_runs_two_searches_on_a_cpu_with_two_threads_unless_told(monkeypatch: pytest.MonkeyPatch, threads: int,
                                                                      searches: int | None, expected: int) -> None:
    import torch

    import nmt.serve.server

    seen = {}
    monkeypatch.setattr(nmt.serve.server, "serve", lambda checkpoints, settings, *rest: seen.update(settings=settings))
    before = torch.get_num_threads()
    try:
        args = build_parser().parse_args(["serve", "-c", "model.pt", "--device", "cpu", "--threads", str(threads),
                                          *(["--searches", str(searches)] if searches else [])])
        args.func(args)
        assert seen["settings"].limits.searches == expected
        assert torch.get_num_threads() == max(1, threads // expected)  # the threads split among the searches
    finally:
        torch.set_num_threads(before)
