"""nmt.train: the experiment folder a run writes, resuming to the same parameters, schedules, gradient
accumulation, DDP against one process, non-finite updates and determinism.

Every run is a few dozen updates of a tiny model on the shared tiny corpus (see training_fixtures.py).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import re
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

import nmt.train as train_module
from nmt.checkpoint import load_checkpoint, load_trained_model
from nmt.config import TrainConfig, load_config
from nmt.data.prepare import prepare
from nmt.distributed import Dist
from nmt.train import Trainer, build_scheduler, seed_everything, teacher_forcing_ratio, train
from training_fixtures import load, max_difference, run_process, tiny_train_dict, to_config, write_yaml

N_UPDATES = 12


@pytest.fixture(scope="module")
def reference(tiny_corpus, tmp_path_factory) -> Path:
    """An uninterrupted run of N_UPDATES updates with dropout 0.3 (so that restoring the RNG matters)."""
    exp = tmp_path_factory.mktemp("reference") / "exp"
    assert train(to_config(tiny_train_dict(tiny_corpus, exp)), run_tests=False) == 0
    return exp


def parameters(exp: Path, name: str = "checkpoints/last.pt") -> dict[str, torch.Tensor]:
    return load(exp / name)["model"]


def train_records(exp: Path) -> list[dict]:
    records = [json.loads(line) for line in (exp / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["kind"] == "train"]


# ----------------------------------------------------------------------------------------------- the folder


def test_a_run_writes_the_experiment_folder(tiny_corpus, tmp_path: Path):
    exp = tmp_path / "exp"
    raw = tiny_train_dict(tiny_corpus, exp, train={"valid_bleu": True, "schedule": "inverse_sqrt",
                                                   "warmup_updates": 4})
    raw["data"]["test"] = {"tiny": {"src": str(tiny_corpus.path("test", "de")),
                                    "tgt": str(tiny_corpus.path("test", "en"))}}
    cfg = to_config(raw)
    assert train(cfg, run_tests=True) == 0

    assert load_config(exp / "config.yaml") == cfg
    records = [json.loads(line) for line in (exp / "metrics.jsonl").read_text().splitlines()]
    train_lines = [r for r in records if r["kind"] == "train"]
    valid_lines = [r for r in records if r["kind"] == "valid"]
    assert [r["update"] for r in train_lines] == list(range(1, N_UPDATES + 1))
    assert [r["update"] for r in valid_lines] == [4, 8, 12]
    assert all(0 <= r["bleu"] <= 100 and r["ppl"] > 1 for r in valid_lines)
    # the lr logged after update u is the one update u + 1 will use: warm-up, then 1/sqrt
    for r in train_lines:
        step = r["update"] + 1
        assert r["lr"] == pytest.approx(1e-3 * min(step / 4, math.sqrt(4 / step)))

    last = load(exp / "checkpoints" / "last.pt")
    assert last["progress"]["update"] == N_UPDATES and last["progress"]["finished"]
    best = sorted((exp / "checkpoints").glob("best_u*.pt"))
    assert 1 <= len(best) <= 2  # keep_best
    assert {Path(path).name for _, _, path in last["progress"]["best"]} == {p.name for p in best}

    final = load_checkpoint(exp / "final.pt")
    assert "optimizer" not in final and "rng" not in final  # what translation needs, not training state
    translator = load_trained_model(exp / "final.pt")
    assert translator.config == cfg
    best_first = load(Path(last["progress"]["best"][0][2]))["model"]
    assert max_difference(final["model"], best_first) == 0.0

    results = json.loads((exp / "results.json").read_text())
    assert set(results) == {"tiny"}
    assert 0 <= results["tiny"]["bleu"] <= 100 and 0 <= results["tiny"]["exact_match"] <= 1
    assert results["tiny"]["sentences"] == len(tiny_corpus.test)
    assert (exp / "test" / "tiny.hyp").read_text().count("\n") == len(tiny_corpus.test)


def test_a_second_run_into_the_same_folder_is_refused(reference: Path, tiny_corpus):
    with pytest.raises(train_module.NMTError, match=f"^{re.escape(str(reference))} already holds a run; use --resume"):
        train(to_config(tiny_train_dict(tiny_corpus, reference)), run_tests=False)


# ----------------------------------------------------------------------------------------------- resuming


def test_interrupted_by_sigint_then_resumed_equals_uninterrupted(reference, tiny_corpus, tmp_path, monkeypatch):
    exp = tmp_path / "exp"
    original = Trainer.train_update

    def interrupted(self, group):
        if self.progress.update == 6:  # Ctrl-C while the 7th update runs
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
                pytest.fail("train() installed no SIGINT handler")  # rather than interrupting pytest itself
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, group)

    monkeypatch.setattr(Trainer, "train_update", interrupted)
    assert train(to_config(tiny_train_dict(tiny_corpus, exp)), run_tests=False) == 128 + signal.SIGINT
    saved = load(exp / "checkpoints" / "last.pt")["progress"]
    assert saved["update"] == 7 and not saved["finished"]  # the update in flight finished, then it saved
    assert not (exp / "final.pt").exists()

    monkeypatch.setattr(Trainer, "train_update", original)
    assert train(to_config(tiny_train_dict(tiny_corpus, exp)), resume=True, run_tests=False) == 0
    assert [r["update"] for r in train_records(exp)] == list(range(1, N_UPDATES + 1))  # none repeated or lost
    assert max_difference(parameters(exp), parameters(reference)) <= 1e-6
    assert max_difference(parameters(exp, "final.pt"), parameters(reference, "final.pt")) <= 1e-6


def test_raising_max_updates_continues_a_finished_run_to_the_same_parameters(reference, tiny_corpus, tmp_path):
    exp = tmp_path / "exp"
    assert train(to_config(tiny_train_dict(tiny_corpus, exp, train={"max_updates": 5})), run_tests=False) == 0
    assert load(exp / "checkpoints" / "last.pt")["progress"]["finished"]
    assert train(to_config(tiny_train_dict(tiny_corpus, exp)), resume=True, run_tests=False) == 0
    assert load(exp / "checkpoints" / "last.pt")["progress"]["update"] == N_UPDATES
    assert max_difference(parameters(exp), parameters(reference)) <= 1e-6


def test_resuming_a_finished_run_trains_no_further(reference, tiny_corpus, tmp_path):
    exp = tmp_path / "exp"
    shutil.copytree(reference, exp)
    (exp / "final.pt").unlink()
    logged = train_records(exp)
    assert train(to_config(tiny_train_dict(tiny_corpus, exp)), resume=True, run_tests=False) == 0
    assert train_records(exp) == logged  # not one update trained again (a deterministic retrain would log them)
    assert load(exp / "checkpoints" / "last.pt")["progress"]["update"] == N_UPDATES
    assert max_difference(parameters(exp), parameters(reference)) == 0.0
    assert (exp / "final.pt").is_file(), "final.pt, removed before resuming, is written again"
    assert max_difference(parameters(exp, "final.pt"), parameters(reference, "final.pt")) == 0.0


def test_resuming_with_another_model_config_is_a_user_error(reference, tiny_corpus, tmp_path):
    exp = tmp_path / "exp"
    shutil.copytree(reference, exp)
    raw = tiny_train_dict(tiny_corpus, exp, model={"dec_hidden": 48}, train={"max_updates": 20})
    with pytest.raises(train_module.NMTError, match=r"last\.pt: cannot resume .*size mismatch"):
        train(to_config(raw), resume=True, run_tests=False)


def _same_state(a, b) -> bool:
    """Equal bit for bit, through the tuples and lists of tensors and arrays that RNG states are made of."""
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same_state(x, y) for x, y in zip(a, b))
    return a == b


def assert_same_rng_states(mine: dict, theirs: dict) -> None:
    """Every RNG state a checkpoint records (torch, python, numpy, and cuda where there is one) is the same."""
    assert mine.keys() == theirs.keys() and {"torch", "python", "numpy"} <= mine.keys()
    for name in mine:
        assert _same_state(mine[name], theirs[name]), name


def test_same_seed_gives_identical_checkpoints(reference, tiny_corpus, tmp_path):
    """Determinism: data order, initialisation, dropout and validation all follow the seed, bit for bit."""
    exp = tmp_path / "exp"
    assert train(to_config(tiny_train_dict(tiny_corpus, exp)), run_tests=False) == 0
    mine, theirs = load(exp / "checkpoints" / "last.pt"), load(reference / "checkpoints" / "last.pt")
    assert max_difference(mine["model"], theirs["model"]) == 0.0
    assert mine["optimizer"]["state"].keys() == theirs["optimizer"]["state"].keys()
    for a, b in zip(mine["optimizer"]["state"].values(), theirs["optimizer"]["state"].values()):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert_same_rng_states(mine["rng"], theirs["rng"])
    for key in set(mine["progress"]) - {"train_seconds", "best"}:
        assert mine["progress"][key] == theirs["progress"][key], key
    assert [b[:2] for b in mine["progress"]["best"]] == [b[:2] for b in theirs["progress"]["best"]]
    assert max_difference(parameters(exp, "final.pt"), parameters(reference, "final.pt")) == 0.0

    other = tmp_path / "other_seed"
    assert train(to_config(tiny_train_dict(tiny_corpus, other, train={"seed": 2})), run_tests=False) == 0
    assert load(other / "checkpoints" / "last.pt")["progress"]["update"] == N_UPDATES
    assert max_difference(parameters(other), parameters(exp)) > 1e-3  # the same updates, another seed



# ----------------------------------------------------------------------------------------------- schedules


def lrs_used(cfg: TrainConfig, updates: int, scores: list[float] | None = None) -> list[float]:
    """The learning rate each of `updates` updates runs with, as the Trainer drives the scheduler."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    scheduler = build_scheduler(optimizer, cfg)
    used = []
    for u in range(updates):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if cfg.schedule == "plateau":
            scheduler.step(scores[u])
        else:
            scheduler.step()
    return used


def test_constant_schedule_warms_up_linearly_then_stays():
    used = lrs_used(TrainConfig(lr=1e-3, schedule="constant", warmup_updates=4), 10)
    assert used == pytest.approx([0.25e-3, 0.5e-3, 0.75e-3] + [1e-3] * 7)
    assert lrs_used(TrainConfig(lr=1e-3, schedule="constant"), 5) == pytest.approx([1e-3] * 5)


def test_inverse_sqrt_schedule_peaks_after_warmup_then_decays_as_one_over_sqrt():
    warmup = 8
    used = lrs_used(TrainConfig(lr=1e-3, schedule="inverse_sqrt", warmup_updates=warmup), 4 * warmup)
    peak = int(np.argmax(used)) + 1
    assert peak == warmup and used[peak - 1] == pytest.approx(1e-3)
    assert all(a < b for a, b in zip(used[:warmup], used[1:warmup]))  # rising
    assert all(a > b for a, b in zip(used[warmup - 1:], used[warmup:]))  # falling
    assert used[4 * warmup - 1] == pytest.approx(1e-3 / 2)  # 1/sqrt: four times later, half the rate
    for u in range(warmup, 4 * warmup + 1):
        assert used[u - 1] == pytest.approx(1e-3 * math.sqrt(warmup / u))


def test_plateau_schedule_cuts_the_rate_only_when_the_dev_score_stalls():
    cfg = TrainConfig(lr=1e-3, schedule="plateau", plateau_factor=0.5, plateau_patience=1, min_lr=2e-4)
    scores = [1, 2, 3, 3, 3, 4, 4, 4, 4, 4, 4, 4, 4]  # dev BLEU per validation (higher is better)
    used = lrs_used(cfg, len(scores), scores)
    # after each validation the next lr is known: improving keeps it, a run of patience+1 stalls halves it
    assert used[:5] == pytest.approx([1e-3] * 5)
    assert used[5] == pytest.approx(0.5e-3)  # stalled at validations 4 and 5
    assert used[6] == pytest.approx(0.5e-3)  # 6 improved
    assert used[8] == pytest.approx(0.25e-3)  # stalled at 7 and 8
    assert min(used) == pytest.approx(2e-4) and used[-1] == pytest.approx(2e-4)  # never below min_lr
    assert all(a >= b for a, b in zip(used, used[1:]))


def test_teacher_forcing_constant():
    cfg = TrainConfig(tf_ratio=0.75, tf_schedule="constant")
    assert {teacher_forcing_ratio(cfg, u) for u in (0, 1, 100, 10**6)} == {0.75}


def test_teacher_forcing_linear_decays_from_ratio_to_min():
    cfg = TrainConfig(tf_ratio=1.0, tf_min=0.2, tf_schedule="linear", tf_decay_updates=100)
    ratios = [teacher_forcing_ratio(cfg, u) for u in range(0, 301)]
    assert ratios[0] == 1.0 and ratios[50] == pytest.approx(0.6) and ratios[100] == pytest.approx(0.2)
    assert ratios[100:] == pytest.approx([0.2] * 201)
    assert all(a >= b for a, b in zip(ratios, ratios[1:]))


@pytest.mark.parametrize("decay", [1, 10, 1000, 10000])
def test_teacher_forcing_inverse_sigmoid_halves_at_decay_updates(decay: int):
    cfg = TrainConfig(tf_ratio=1.0, tf_min=0.05, tf_schedule="inverse_sigmoid", tf_decay_updates=decay)
    ratios = [teacher_forcing_ratio(cfg, u) for u in range(0, 4 * decay + 200)]
    assert teacher_forcing_ratio(cfg, decay) == pytest.approx(0.5, abs=1e-6)
    assert all(a >= b for a, b in zip(ratios, ratios[1:]))
    assert min(ratios) == 0.05 and ratios[-1] == 0.05  # decays to tf_min, never below
    if decay >= 1000:
        assert ratios[0] > 0.99  # starts (almost) fully teacher-forced


# ----------------------------------------------------------------------------------------------- updates


@pytest.fixture(scope="module")
def prepared(tiny_corpus, tmp_path_factory):
    """Config (dropout 0) and prepared data for Trainer-level tests."""
    exp = tmp_path_factory.mktemp("prepared") / "exp"
    cfg = to_config(tiny_train_dict(tiny_corpus, exp, model={"dropout": 0.0, "emb_dropout": 0.0}))
    return cfg, prepare(cfg)


def make_trainer(cfg, data) -> Trainer:
    seed_everything(cfg.train.seed)
    return Trainer(cfg, data, torch.device("cpu"), Dist())


def first_batches(cfg, data, n: int) -> list[np.ndarray]:
    from nmt.data.batching import make_batches

    return make_batches(data.train.src_lengths + 1, data.train.tgt_lengths + 1, cfg.train.max_tokens,
                        seed=cfg.train.seed)[:n]


def test_accumulating_two_batches_equals_one_update_on_their_union(prepared):
    cfg, data = prepared
    batches = first_batches(cfg, data, 6)
    accumulated, union = make_trainer(cfg, data), make_trainer(cfg, data)
    assert max_difference(accumulated.model.state_dict(), union.model.state_dict()) == 0.0
    for i in range(0, 6, 2):
        loss_a, _, tokens_a = accumulated.train_update([batches[i], batches[i + 1]])
        loss_u, _, tokens_u = union.train_update([np.concatenate([batches[i], batches[i + 1]])])
        assert tokens_a == tokens_u and loss_a == pytest.approx(loss_u, rel=1e-6)
    assert max_difference(accumulated.model.state_dict(), union.model.state_dict()) <= 1e-6


def test_accum_steps_groups_that_many_batches_per_update(tiny_corpus, tmp_path):
    exp = tmp_path / "exp"
    raw = tiny_train_dict(tiny_corpus, exp, train={"accum_steps": 3, "max_updates": 2, "valid_every": 0})
    assert train(to_config(raw), run_tests=False) == 0
    progress = load(exp / "checkpoints" / "last.pt")["progress"]
    assert (progress["update"], progress["batch_in_epoch"]) == (2, 6)


def test_the_scheduled_teacher_forcing_ratio_reaches_the_model(prepared, monkeypatch):
    cfg, data = prepared
    cfg = copy.deepcopy(cfg)
    cfg.train.tf_schedule, cfg.train.tf_decay_updates, cfg.train.tf_min = "linear", 4, 0.0
    trainer = make_trainer(cfg, data)
    seen = []
    forward = type(trainer.model).forward

    def spy(self, src, src_lengths, tgt_in, tf_ratio=1.0, select=None):
        seen.append(tf_ratio)
        return forward(self, src, src_lengths, tgt_in, tf_ratio, select)

    monkeypatch.setattr(type(trainer.model), "forward", spy)
    for batch in first_batches(cfg, data, 5):
        trainer.train_update([batch])
        trainer.progress.update += 1
    assert seen == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])


# ----------------------------------------------------------------------------------------------- bad updates


def _poison_loss(monkeypatch, when) -> None:
    """Make the training loss nan whenever `when()` is true."""
    real = train_module.sequence_loss

    def poisoned(logits, target, label_smoothing):
        loss, nll = real(logits, target, label_smoothing)
        return (loss * math.nan, nll * math.nan) if when() else (loss, nll)

    monkeypatch.setattr(train_module, "sequence_loss", poisoned)


def _optimizer_state(trainer: Trainer) -> list[dict]:
    return copy.deepcopy(list(trainer.optimizer.state_dict()["state"].values()))


@pytest.mark.parametrize("fault", ["loss", "gradient"])
def test_a_non_finite_update_is_skipped_and_leaves_adam_untouched(prepared, monkeypatch, caplog, fault):
    cfg, data = prepared
    b1, b2, b3 = first_batches(cfg, data, 3)
    faulty, clean = make_trainer(cfg, data), make_trainer(cfg, data)
    for trainer in (faulty, clean):
        trainer.train_update([b1])
    before_params, before_adam = copy.deepcopy(faulty.model.state_dict()), _optimizer_state(faulty)
    lr_before = faulty.optimizer.param_groups[0]["lr"]

    poison = {"on": True}
    if fault == "loss":
        _poison_loss(monkeypatch, lambda: poison["on"])
    else:  # a finite loss whose gradient overflows in one parameter
        handle = faulty.model.output.bias.register_hook(lambda g: g * math.inf if poison["on"] else g)
    loss, nll, _ = faulty.train_update([b2])
    poison["on"] = False
    if fault == "gradient":
        handle.remove()
    assert math.isnan(loss) and faulty.progress.bad_updates == 1
    assert "non-finite loss or gradient, skipped (1 in a row)" in caplog.text
    assert max_difference(faulty.model.state_dict(), before_params) == 0.0
    after_adam = _optimizer_state(faulty)
    for a, b in zip(after_adam, before_adam):
        assert all(torch.equal(a[k], b[k]) for k in a)  # moments and step count as they were
    assert faulty.optimizer.param_groups[0]["lr"] == lr_before
    assert all(p.grad is None for p in faulty.model.parameters())

    # the next good update is exactly what a run that never saw the bad batch does
    faulty.train_update([b3])
    clean.train_update([b3])
    assert faulty.progress.bad_updates == 0
    assert max_difference(faulty.model.state_dict(), clean.model.state_dict()) == 0.0


def test_k_non_finite_updates_in_a_row_stop_the_run_with_one_clear_line(tiny_corpus, tmp_path, monkeypatch,
                                                                        run_cli, user_error):
    _poison_loss(monkeypatch, lambda: True)
    config = write_yaml(tiny_train_dict(tiny_corpus, tmp_path / "exp", train={"max_bad_updates": 3}),
                        tmp_path / "config.yaml")
    user_error(run_cli("train", config, "--no-test"),
               "3 non-finite updates in a row at update 3: lower train.lr or check the data")


def test_isolated_non_finite_updates_do_not_stop_the_run(tiny_corpus, tmp_path, monkeypatch, caplog):
    calls = {"n": 0}

    def every_other_update() -> bool:  # sequence_loss runs once per training batch (accum_steps 1)
        if torch.is_inference_mode_enabled():  # a dev batch: validation runs in inference mode
            return False
        calls["n"] += 1
        return calls["n"] % 2 == 1

    _poison_loss(monkeypatch, every_other_update)
    caplog.set_level(logging.WARNING, logger="nmt.train")
    exp = tmp_path / "exp"
    raw = tiny_train_dict(tiny_corpus, exp, train={"max_bad_updates": 2, "valid_every": 0, "max_updates": 8})
    assert train(to_config(raw), run_tests=False) == 0
    assert load(exp / "checkpoints" / "last.pt")["progress"]["update"] == 8
    skipped = [r.message for r in caplog.records if "non-finite" in r.message]
    assert skipped == [f"update {u}: non-finite loss or gradient, skipped (1 in a row)" for u in (1, 3, 5, 7)]


# ----------------------------------------------------------------------------------------------- DDP


def test_two_process_gloo_ddp_matches_one_process(tiny_corpus, tmp_path):
    """Each rank computes half of every batch; the gradients, normalised by the global token count and
    all-reduced, are the one-process gradients, so the parameters end the same."""
    single, double = tmp_path / "single", tmp_path / "ddp"
    sections = dict(model={"dropout": 0.0, "emb_dropout": 0.0}, train={"max_updates": 8})
    assert train(to_config(tiny_train_dict(tiny_corpus, single, **sections)), run_tests=False) == 0
    for shared in ("spm", "cache"):  # the same SentencePiece model and encoded data
        shutil.copytree(single / shared, double / shared)
    config = write_yaml(tiny_train_dict(tiny_corpus, double, **sections), tmp_path / "ddp.yaml")
    done = run_process(["--standalone", "--nproc_per_node=2", "-m", "nmt", "train", config, "--no-test"],
                       cwd=tmp_path, module="torch.distributed.run")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 process(es)" in done.stderr
    assert load(double / "checkpoints" / "last.pt")["progress"]["update"] == 8
    assert max_difference(parameters(double), parameters(single)) <= 1e-5


def test_stop_at_bleu_ends_the_run_at_the_first_validation_that_reaches_it(tiny_corpus, tmp_path, monkeypatch):
    from nmt import train as train_module

    bleus = iter([5.0, 12.0, 30.0, 40.0])
    original = train_module.Trainer.validate

    def fake_bleu(self):  # the real dev loss, a scripted dev BLEU
        return {**original(self), "bleu": next(bleus)}

    monkeypatch.setattr(train_module.Trainer, "validate", fake_bleu)
    exp = tmp_path / "exp"
    raw = tiny_train_dict(tiny_corpus, exp, train={"valid_every": 2, "max_updates": 20, "valid_bleu": True,
                                                   "stop_at_bleu": 10.0})
    monkeypatch.setattr(train_module.Trainer, "validate", fake_bleu)
    assert train(to_config(raw), run_tests=False) == 0
    assert load(exp / "checkpoints" / "last.pt")["progress"]["update"] == 4
