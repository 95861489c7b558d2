"""nmt.checkpoint: atomic writes survive failures, every kind of damage is reported naming the file, resume falls
back to the newest good checkpoint, averaging is the mean, and weights must match their SentencePiece model."""

from __future__ import annotations

import errno
import io
import logging
import os
import pickle
import random
import shutil
from pathlib import Path

import pytest
import torch

import nmt
from nmt.checkpoint import average_checkpoints, load_checkpoint, load_trained_model, save_atomic
from nmt.config import SubwordConfig
from nmt.data.subword import train_subword
from nmt.errors import NMTError
from nmt.train import train
from training_fixtures import load, max_difference, tiny_train_dict, to_config, write_yaml


@pytest.fixture(scope="module")
def run(tiny_corpus, tmp_path_factory) -> Path:
    """A finished 12-update run: checkpoints/last.pt, best_u*.pt (keep_best 2) and final.pt. Read-only."""
    exp = tmp_path_factory.mktemp("run") / "exp"
    assert train(to_config(tiny_train_dict(tiny_corpus, exp)), run_tests=False) == 0
    return exp


def best_paths(exp: Path) -> list[Path]:
    return sorted((exp / "checkpoints").glob("best_u*.pt"))


# ----------------------------------------------------------------------------------------------- atomic writes


def _fail_halfway(error: OSError):
    """A torch.save that writes half of the checkpoint, then fails like a full disk."""
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise error

    return save


def _fail(error: OSError):
    def fail(*args, **kwargs):
        raise error

    return fail


FAILURES = {
    "disk full mid-write": ("torch.save", _fail_halfway(OSError(errno.ENOSPC, "No space left on device"))),
    "fsync fails": ("os.fsync", _fail(OSError(errno.EIO, "Input/output error"))),
    "rename fails": ("os.replace", _fail(OSError(errno.EXDEV, "Cross-device link"))),
}


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_a_failed_write_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch, failure):
    path = tmp_path / "last.pt"
    old = {"format": nmt.CHECKPOINT_FORMAT, "model": {"w": torch.arange(1000.0)}}
    save_atomic(old, path)
    before = path.read_bytes()

    target, broken = FAILURES[failure]
    module, name = target.split(".")
    monkeypatch.setattr({"torch": torch, "os": os}[module], name, broken)
    with pytest.raises(NMTError, match=f"^cannot write {path}: "):
        save_atomic({"format": nmt.CHECKPOINT_FORMAT, "model": {"w": -torch.arange(1000.0)}}, path)
    monkeypatch.undo()

    assert path.read_bytes() == before
    assert torch.equal(load_checkpoint(path)["model"]["w"], old["model"]["w"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary file left behind


def test_save_atomic_replaces_the_whole_file(tmp_path):
    path = tmp_path / "sub" / "c.pt"
    for value in (1.0, 2.0):
        save_atomic({"format": nmt.CHECKPOINT_FORMAT, "model": {"w": torch.full((3,), value)}}, path)
        assert torch.equal(load_checkpoint(path)["model"]["w"], torch.full((3,), value))
    assert [p.name for p in path.parent.iterdir()] == ["c.pt"]


def test_a_full_disk_stops_training_with_one_clear_line_and_resume_continues(tiny_corpus, tmp_path, monkeypatch,
                                                                           run_cli, user_error, run):
    exp = tmp_path / "exp"
    config = write_yaml(tiny_train_dict(tiny_corpus, exp), tmp_path / "config.yaml")
    real_save, failing = torch.save, _fail_halfway(OSError(errno.ENOSPC, "No space left on device"))

    def save(obj, f, *args, **kwargs):  # the disk fills up when last.pt is written at update 8
        if ".last.pt.tmp" in str(getattr(f, "name", "")) and obj["progress"]["update"] == 8:
            return failing(obj, f, *args, **kwargs)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    user_error(run_cli("train", config, "--no-test"),
               f"cannot write checkpoint {exp / 'checkpoints' / 'last.pt'} (No space left on device); the previous "
               "checkpoint is intact, free some space and resume with --resume")
    assert load_checkpoint(exp / "checkpoints" / "last.pt")["progress"]["update"] == 4
    assert not [p for p in (exp / "checkpoints").iterdir() if ".tmp" in p.name]

    monkeypatch.setattr(torch, "save", real_save)  # space freed
    assert run_cli("train", config, "--no-test", "--resume").code == 0
    assert max_difference(load(exp / "checkpoints" / "last.pt")["model"],
                          load(run / "checkpoints" / "last.pt")["model"]) <= 1e-6


# ----------------------------------------------------------------------------------------------- damage


def _flip_a_weight_byte(data: bytes, payload: dict) -> bytes:
    """Flip one bit inside the stored bytes of the largest weight matrix (the zip layout stays valid)."""
    weight = max(payload["model"].values(), key=lambda t: t.numel())
    raw = weight.numpy().tobytes()
    at = data.find(raw)
    assert at >= 0
    damaged = bytearray(data)
    damaged[at + len(raw) // 2] ^= 0x10
    return bytes(damaged)


def _torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


UNREADABLE = "not a readable checkpoint (truncated or corrupt: "
CHECKSUM = "corrupt checkpoint (checksum mismatch in "
FOREIGN = "not an nmt checkpoint"

# damage -> (what it does to the bytes of final.pt, how the one-line message goes on after "PATH: ")
DAMAGE = {
    "empty": (lambda data, payload: b"", UNREADABLE),
    "truncated to half": (lambda data, payload: data[: len(data) // 2], UNREADABLE),
    "last byte missing": (lambda data, payload: data[:-1], UNREADABLE),
    "first kilobyte zeroed": (lambda data, payload: bytes(1024) + data[1024:], CHECKSUM),
    "random bytes": (lambda data, payload: random.Random(0).randbytes(4096), UNREADABLE),
    "text file": (lambda data, payload: "de en\nhallo welt\n".encode(), UNREADABLE),
    "bit flip in a weight": (_flip_a_weight_byte, CHECKSUM),
    "foreign pickle": (lambda data, payload: pickle.dumps({"model": {}, "weights": [1, 2, 3]}), UNREADABLE),
    "foreign torch file": (lambda data, payload: _torch_bytes({"state_dict": payload["model"]}), FOREIGN),
    "bare state dict": (lambda data, payload: _torch_bytes(payload["model"]), FOREIGN),
    "a list": (lambda data, payload: _torch_bytes([1, 2, 3]), FOREIGN),
    "incompatible format version": (lambda data, payload: _torch_bytes({**payload, "format": 999}),
                                    f"checkpoint format 999 is not supported by this version "
                                    f"(expects {nmt.CHECKPOINT_FORMAT})"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_every_kind_of_damage_is_reported_naming_the_file(run, tmp_path, damage):
    source = run / "final.pt"
    data = source.read_bytes()
    path = tmp_path / f"{damage.replace(' ', '_')}.pt"
    spoil, expected = DAMAGE[damage]
    path.write_bytes(spoil(data, load(source)))
    with pytest.raises(NMTError) as err:
        load_trained_model(path)
    message = str(err.value)
    assert message.startswith(f"{path}: {expected}") and "\n" not in message, message


def test_a_missing_checkpoint_or_a_folder_is_reported(tmp_path):
    with pytest.raises(NMTError, match="checkpoint not found: .*nothing.pt"):
        load_checkpoint(tmp_path / "nothing.pt")
    with pytest.raises(NMTError) as err:
        load_checkpoint(tmp_path)
    assert str(err.value) == f"checkpoint not found: {tmp_path}"


def test_an_undamaged_checkpoint_loads_unchanged(run, tmp_path):
    copy = tmp_path / "copy.pt"
    shutil.copy(run / "final.pt", copy)
    assert max_difference(load_checkpoint(copy)["model"], load(run / "final.pt")["model"]) == 0.0


# ----------------------------------------------------------------------------------------------- resume


def test_resume_falls_back_to_the_newest_good_checkpoint_and_says_so(run, tiny_corpus, tmp_path, caplog):
    """last.pt and the newest best checkpoint are damaged: resume takes the next one, says so, and ends with the
    parameters of the undamaged run."""
    exp = tmp_path / "exp"
    shutil.copytree(run, exp)
    (exp / "final.pt").unlink()
    *older, newest = best_paths(exp)
    assert older, "the run should have kept two best checkpoints"
    for broken in (exp / "checkpoints" / "last.pt", newest):
        broken.write_bytes(broken.read_bytes()[:1000])
    caplog.set_level(logging.INFO)
    assert train(to_config(tiny_train_dict(tiny_corpus, exp)), resume=True, run_tests=False) == 0
    assert f"skipping checkpoint: {exp / 'checkpoints' / 'last.pt'}" in caplog.text
    assert f"skipping checkpoint: {newest}" in caplog.text
    assert f"resuming from {older[-1]}, the newest good checkpoint" in caplog.text
    assert max_difference(load(exp / "checkpoints" / "last.pt")["model"],
                          load(run / "checkpoints" / "last.pt")["model"]) <= 1e-6


def test_resume_with_no_usable_checkpoint_refuses_to_start_over(run, tiny_corpus, tmp_path):
    exp = tmp_path / "exp"
    shutil.copytree(run, exp)
    for path in (exp / "checkpoints").glob("*.pt"):
        path.write_bytes(b"")
    with pytest.raises(NMTError, match="no usable checkpoint in .*move them away"):
        train(to_config(tiny_train_dict(tiny_corpus, exp)), resume=True, run_tests=False)
    assert all(p.stat().st_size == 0 for p in (exp / "checkpoints").glob("*.pt"))  # nothing overwritten


# ----------------------------------------------------------------------------------------------- averaging


def test_averaging_two_checkpoints_gives_the_mean_of_their_parameters(run, tmp_path, run_cli):
    a, b = best_paths(run)[-2:]
    ma, mb = load(a)["model"], load(b)["model"]
    assert max_difference(ma, mb) > 0  # two different points of the run
    averaged = average_checkpoints([a, b])
    assert averaged["model"].keys() == ma.keys()
    for key in ma:
        assert torch.allclose(averaged["model"][key], (ma[key] + mb[key]) / 2, atol=1e-7), key

    out = tmp_path / "avg.pt"
    assert run_cli("average", a, b, "-o", out).code == 0
    translator = load_trained_model(out)  # self-contained: config and SentencePiece model came along
    assert max_difference(translator.model.state_dict(), averaged["model"]) == 0.0
    assert max_difference(average_checkpoints([a, a, a])["model"], ma) <= 1e-7


def test_averaging_checkpoints_of_different_models_is_refused(run, tmp_path):
    other = tmp_path / "other.pt"
    payload = load(run / "final.pt")
    payload["model"] = {k: v[..., :-1] if v.dim() else v for k, v in payload["model"].items()}
    torch.save(payload, other)
    with pytest.raises(NMTError, match=f"{other}: cannot average checkpoints of different models"):
        average_checkpoints([run / "final.pt", other])


# ----------------------------------------------------------------------------------------------- vocabularies


@pytest.mark.parametrize("change", ["other vocabulary size", "not a SentencePiece model", "no SentencePiece model",
                                    "invalid stored config"])
def test_weights_that_do_not_match_the_checkpoint_s_vocabulary_are_refused(run, tmp_path, change):
    payload = load(run / "final.pt")
    if change == "other vocabulary size":
        sentences = [f"wort{i} satz{i % 7} ende" for i in range(300)]
        spm = train_subword(sentences, SubwordConfig(vocab_size=60))
        payload["spm"] = {"src": spm, "tgt": spm}
        expected = "do not match"
    elif change == "not a SentencePiece model":
        payload["spm"] = {"src": b"junk", "tgt": b"junk"}
        expected = "not a valid SentencePiece model"
    elif change == "no SentencePiece model":
        del payload["spm"]
        expected = "not a complete nmt checkpoint"
    else:
        payload["config"]["model"]["cel"] = "gru"
        expected = "stored config is invalid"
    path = tmp_path / "mismatch.pt"
    save_atomic(payload, path)
    with pytest.raises(NMTError) as err:
        load_trained_model(path)
    assert str(err.value).startswith(f"{path}: ") and expected in str(err.value)


# ----------------------------------------------------------------------------------------------- older checkpoints


def test_a_checkpoint_from_before_scaled_embeddings_keeps_computing_what_it_was_trained_to(run, tmp_path):
    payload = load(run / "final.pt")
    assert payload["config"]["model"]["scale_embeddings"] is True  # today's default
    emb_dim = payload["config"]["model"]["emb_dim"]
    assert load_trained_model(run / "final.pt").model.encoder.emb_scale == emb_dim ** 0.5
    del payload["config"]["model"]["scale_embeddings"]  # as written before the option existed
    old = tmp_path / "old.pt"
    save_atomic(payload, old)
    translator = load_trained_model(old)
    assert translator.config.model.scale_embeddings is False
    assert translator.model.encoder.emb_scale == translator.model.decoder.emb_scale == 1.0


def test_resuming_with_the_other_embedding_scale_is_refused_naming_the_key(run, tiny_corpus, tmp_path):
    exp = tmp_path / "exp"
    shutil.copytree(run, exp)
    (exp / "final.pt").unlink()
    before = (exp / "checkpoints" / "last.pt").read_bytes()
    config = to_config(tiny_train_dict(tiny_corpus, exp, model={"scale_embeddings": False}))
    with pytest.raises(NMTError, match=r"last\.pt: trained with model\.scale_embeddings: true; set it"):
        train(config, resume=True, run_tests=False)
    assert (exp / "checkpoints" / "last.pt").read_bytes() == before


def test_a_training_checkpoint_of_the_earlier_format_still_loads_and_restores_its_rng(run, tmp_path):
    """Before weights-only loading, training checkpoints held the numpy RNG state as a numpy array; such a file
    loads (numpy arrays of numbers are the one type allowed beyond tensors) and restores the same state."""
    import numpy as np

    from nmt.checkpoint import load_training_checkpoint, numpy_rng_state

    payload = load(run / "checkpoints" / "last.pt")
    kind, keys, *rest = payload["rng"]["numpy"]
    assert isinstance(keys, torch.Tensor)  # what this version writes
    payload["rng"]["numpy"] = (kind, keys.numpy().astype(np.uint32), *rest)  # what earlier versions wrote
    old = tmp_path / "old.pt"
    torch.save(payload, old)
    assert "numpy.ndarray" in torch.serialization.get_unsafe_globals_in_checkpoint(old)
    np.random.set_state(numpy_rng_state(load_training_checkpoint(old)["rng"]["numpy"]))
    assert np.array_equal(np.random.get_state()[1], keys.numpy().astype(np.uint32))
