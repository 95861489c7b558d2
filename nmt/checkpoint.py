"""Checkpoints: the only module that knows their format. It builds what is saved, writes it atomically, reads it
back safely and verified, picks the checkpoints a run can resume from, averages them, and rebuilds a trained
model from one.

A checkpoint is self-contained: it holds the resolved config and the SentencePiece model(s), so a single file
translates on its own. The inference payload (what `final.pt` and averaged checkpoints hold) is

    {"format": CHECKPOINT_FORMAT, "version": str, "config": dict, "spm": {"src": bytes, "tgt": bytes},
     "model": state dict}

and a training checkpoint adds "optimizer", "scheduler", "scaler", "rng" and "progress".

Safety. Checkpoints are shared files, and unpickling one may run any code it names. They are read with
`torch.load(weights_only=True)`, which accepts only tensors and plain containers; the single other type a
checkpoint may hold is a numpy array of numbers (the numpy RNG state in training checkpoints written before
this rule: newer ones store it as a tensor). A checkpoint that names anything else is refused before any of
it runs.
"""

from __future__ import annotations

import os
import pickle
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import nmt
from nmt import CHECKPOINT_FORMAT
from nmt.config import Config, config_from_dict, to_dict
from nmt.data.subword import Subword
from nmt.errors import NMTError
from nmt.model.seq2seq import Seq2Seq, build_model
from nmt.outputs import atomic_output

INFERENCE_KEYS = ("format", "version", "config", "spm", "model")
TRAINING_KEYS = ("optimizer", "scheduler", "scaler", "rng", "progress")



def _numpy_array_globals() -> list:
    """What unpickling a numpy array of numbers needs (the numpy RNG state of training checkpoints written by
    earlier versions): its constructor, its class and its dtype, nothing that can run other code."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    number_dtypes = [type(np.dtype(t)) for t in (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8,
                                                  np.uint16, np.uint32, np.uint64, np.float32, np.float64)]
    return [_reconstruct, np.ndarray, np.dtype, *number_dtypes]


# ----------------------------------------------------------------------------------------------- building


def inference_payload(config: Config, src_spm: Subword, tgt_spm: Subword, model: torch.nn.Module) -> dict:
    """What translation needs: the config, both SentencePiece models and the weights."""
    return {"format": CHECKPOINT_FORMAT, "version": nmt.__version__, "config": to_dict(config),
            "spm": {"src": src_spm.model_bytes, "tgt": tgt_spm.model_bytes}, "model": model.state_dict()}


def training_payload(inference: dict, optimizer: dict, scheduler: dict, scaler: dict, rng: dict,
                     progress: dict) -> dict:
    """An inference payload with the state a resumed run needs to continue exactly (state dicts, RNG states)."""
    rng = dict(rng)
    kind, keys, *rest = rng["numpy"]  # stored as a tensor, not a numpy array: see the module docstring
    rng["numpy"] = (kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), *rest)
    return {**inference, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler, "rng": rng,
            "progress": progress}


def numpy_rng_state(stored: tuple) -> tuple:
    """The numpy RNG state as `np.random.set_state` takes it, from a checkpoint of any version."""
    kind, keys, *rest = stored
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
    return (kind, keys.astype(np.uint32), *rest)


def inference_part(payload: dict) -> dict:
    """The inference payload inside a training checkpoint (for final.pt)."""
    return {key: payload[key] for key in INFERENCE_KEYS if key in payload}


# ----------------------------------------------------------------------------------------------- writing


def save_atomic(payload: dict, path: str | os.PathLike) -> None:
    """Write `payload` to `path` so that `path` is always either the old file or the complete new one (see
    `nmt.outputs.atomic_output`); a failed write raises `NMTError("cannot write PATH: reason")`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, binary=True) as f:
        torch.save(payload, f)


# ----------------------------------------------------------------------------------------------- reading

_LOAD_ERRORS = (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError,
                AttributeError, ImportError, IndexError, KeyError, TypeError, UnicodeDecodeError, zlib.error,
                struct.error, NotImplementedError)


def _first_line(err: BaseException) -> str:
    text = str(err)
    return (text.splitlines()[0] if text.strip() else type(err).__name__)[:200]


def _refused_global(err: pickle.UnpicklingError) -> str | None:
    """The name of the code a weights-only load refused to run, if that is why it failed."""
    match = re.search(r"(?:GLOBAL|global) ([\w.]+)", str(err))
    return match.group(1) if match else None


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load and check a checkpoint without running any code from it; any damage, or any code in it, is
    reported as a one-line NMTError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise NMTError(f"checkpoint not found: {path}")
    # torch.load does not check the CRC-32 that torch.save stores for every record, so a flipped bit in the
    # weights would load silently: check them first (one extra read of the file).
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except _LOAD_ERRORS as err:
        raise NMTError(f"{path}: not a readable checkpoint (truncated or corrupt: {_first_line(err)})") from None
    if damaged is not None:
        raise NMTError(f"{path}: corrupt checkpoint (checksum mismatch in {damaged})")
    try:
        with torch.serialization.safe_globals(_numpy_array_globals()):
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        name = _refused_global(err)
        if name is not None:
            raise NMTError(f"{path}: refused: the checkpoint asks to run {name}, and nmt never runs code from a "
                           "checkpoint (was it made by nmt?)") from None
        raise NMTError(f"{path}: not a readable checkpoint (truncated or corrupt: {_first_line(err)})") from None
    except _LOAD_ERRORS as err:
        raise NMTError(f"{path}: not a readable checkpoint (truncated or corrupt: {_first_line(err)})") from None
    if not isinstance(payload, dict) or "model" not in payload or "format" not in payload:
        raise NMTError(f"{path}: not an nmt checkpoint")
    if payload["format"] != CHECKPOINT_FORMAT:
        raise NMTError(f"{path}: checkpoint format {payload['format']} is not supported by this version "
                       f"(expects {CHECKPOINT_FORMAT})")
    return payload


def load_training_checkpoint(path: str | os.PathLike) -> dict:
    """A checkpoint that holds the training state (`last.pt`, `best_u*.pt`), not only the weights."""
    payload = load_checkpoint(path)
    if not all(key in payload for key in TRAINING_KEYS):
        raise NMTError(f"{path}: holds no training state")
    return payload


def stored_config(payload: dict) -> dict:
    """The config a checkpoint was trained with, completed with the behaviour of the version that wrote it.

    Options added after a checkpoint was written must not change what it computes: a model saved before
    `model.scale_embeddings` existed was trained without the scale, whatever today's default is.
    """
    config = dict(payload["config"])
    if isinstance(config.get("model"), dict):
        config["model"] = {"scale_embeddings": False, **config["model"]}
    return config


def resume_candidates(ckpt_dir: Path, remove_stale: bool = True) -> list[Path]:
    """The checkpoints a run may resume from, in the order to try them: `last.pt`, then the others newest
    first. With `remove_stale` (the main process only), temporary files left by a process killed in the
    middle of a write are removed."""
    if remove_stale:
        for stale in [*ckpt_dir.glob(".*.pt.tmp*"), *ckpt_dir.parent.glob(".final.pt.tmp*")]:
            stale.unlink(missing_ok=True)
    candidates = sorted(ckpt_dir.glob("*.pt"), key=lambda p: p.stat().st_mtime, reverse=True)
    last = ckpt_dir / "last.pt"
    if last in candidates:
        candidates.remove(last)
        candidates.insert(0, last)
    return candidates


# ----------------------------------------------------------------------------------------------- models


@dataclass
class TrainedModel:
    """A model with the vocabularies and config it was trained with: what translation needs."""

    model: Seq2Seq
    src_spm: Subword
    tgt_spm: Subword
    config: Config
    path: str = "<in memory>"


def trained_model_from_payload(payload: dict, path: str = "checkpoint") -> TrainedModel:
    """Rebuild the model of a loaded checkpoint, in eval mode on the CPU; mismatches are user errors."""
    spm_models = payload.get("spm")
    if "config" not in payload or not isinstance(spm_models, dict) or not {"src", "tgt"} <= spm_models.keys():
        raise NMTError(f"{path}: not a complete nmt checkpoint (no config or SentencePiece models)")
    try:
        config = config_from_dict(stored_config(payload))
    except NMTError as err:
        raise NMTError(f"{path}: stored config is invalid ({err})") from None
    try:
        src_spm = Subword(spm_models["src"])
        tgt_spm = Subword(spm_models["tgt"])
    except (NMTError, TypeError) as err:
        raise NMTError(f"{path}: {err}") from None
    joint = spm_models["src"] == spm_models["tgt"]
    model = build_model(config.model, len(src_spm), len(tgt_spm), joint)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
        raise NMTError(f"{path}: model weights do not match its config or SentencePiece model(s) ({first})") \
            from None
    model.eval()
    return TrainedModel(model, src_spm, tgt_spm, config, str(path))


def load_trained_model(path: str | os.PathLike) -> TrainedModel:
    return trained_model_from_payload(load_checkpoint(path), str(path))


def load_ensemble(paths: list[str], device: torch.device) -> list[TrainedModel]:
    """Load one or more checkpoints onto `device`; an ensemble's members must share their vocabularies."""
    if not paths:
        raise NMTError("no checkpoint given")
    members = [load_trained_model(p) for p in paths]
    first = members[0]
    for member in members[1:]:
        for side, mine, theirs in (("source", member.src_spm, first.src_spm),
                                   ("target", member.tgt_spm, first.tgt_spm)):
            if mine.model_bytes != theirs.model_bytes:
                raise NMTError(f"{member.path}: its {side} SentencePiece model differs from {first.path}'s; "
                               "an ensemble needs checkpoints with the same vocabularies")
    for member in members:
        member.model.to(device)
    return members


def average_checkpoints(paths: list[str | os.PathLike]) -> dict:
    """Average the model parameters of several checkpoints of one run; the rest comes from the last one."""
    if not paths:
        raise NMTError("no checkpoints to average")
    payloads = [load_checkpoint(p) for p in paths]
    keys = payloads[0]["model"].keys()
    for p, payload in zip(paths[1:], payloads[1:]):
        if payload["model"].keys() != keys or any(
                payload["model"][k].shape != payloads[0]["model"][k].shape for k in keys):
            raise NMTError(f"{p}: cannot average checkpoints of different models ({paths[0]} differs)")
    averaged: dict[str, Any] = {}
    for key in keys:
        tensors = [payload["model"][key] for payload in payloads]
        if tensors[0].is_floating_point():
            averaged[key] = torch.stack([t.double() for t in tensors]).mean(0).to(tensors[0].dtype)
        else:
            averaged[key] = tensors[-1]
    result = inference_part(payloads[-1])
    result["model"] = averaged
    result["averaged_from"] = [str(p) for p in paths]
    return result
