"""Checkpoints: atomic writes, verified loads, averaging, and loading a model ready to translate.

A checkpoint is self-contained: it holds the resolved config and the SentencePiece model(s), so a single file
translates on its own. Writes go to a temporary file that is fsynced and renamed over the old one, so a crash
mid-write (or a full disk) leaves the previous checkpoint whole.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nmt import CHECKPOINT_FORMAT
from nmt.config import Config, config_from_dict
from nmt.data.subword import Subword
from nmt.errors import NMTError
from nmt.model.seq2seq import Seq2Seq, build_model


def save_atomic(payload: dict, path: str | os.PathLike) -> None:
    """Write `payload` to `path` so that `path` is always either the old file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load and check a checkpoint; any damage is reported as a one-line NMTError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise NMTError(f"checkpoint not found: {path}")
    # torch.load does not check the CRC-32 that torch.save stores for every record, so a flipped bit in the
    # weights would load silently: check them first (one extra read of the file).
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, RuntimeError, KeyError,
            UnicodeDecodeError, zlib.error, struct.error) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise NMTError(f"{path}: not a readable checkpoint (truncated or corrupt: {reason[:200]})") from None
    if damaged is not None:
        raise NMTError(f"{path}: corrupt checkpoint (checksum mismatch in {damaged})")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError,
            AttributeError, ImportError, IndexError, KeyError, TypeError, UnicodeDecodeError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise NMTError(f"{path}: not a readable checkpoint (truncated or corrupt: {reason[:200]})") from None
    if not isinstance(payload, dict) or "model" not in payload or "format" not in payload:
        raise NMTError(f"{path}: not an nmt checkpoint")
    if payload["format"] != CHECKPOINT_FORMAT:
        raise NMTError(f"{path}: checkpoint format {payload['format']} is not supported by this version "
                       f"(expects {CHECKPOINT_FORMAT})")
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


@dataclass
class Translator:
    """What translation needs, rebuilt from one checkpoint."""

    model: Seq2Seq
    src_model: Subword
    tgt_model: Subword
    config: Config
    path: str


def model_from_checkpoint(payload: dict, path: str = "checkpoint") -> Translator:
    spm_models = payload.get("spm")
    if "config" not in payload or not isinstance(spm_models, dict) or not {"src", "tgt"} <= spm_models.keys():
        raise NMTError(f"{path}: not a complete nmt checkpoint (no config or SentencePiece models)")
    try:
        config = config_from_dict(stored_config(payload))
    except NMTError as err:
        raise NMTError(f"{path}: stored config is invalid ({err})") from None
    try:
        src_model = Subword(payload["spm"]["src"])
        tgt_model = Subword(payload["spm"]["tgt"])
    except (NMTError, TypeError) as err:
        raise NMTError(f"{path}: {err}") from None
    joint = payload["spm"]["src"] == payload["spm"]["tgt"]
    model = build_model(config.model, len(src_model), len(tgt_model), joint)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
        raise NMTError(f"{path}: model weights do not match its config or SentencePiece model(s) ({first})") \
            from None
    model.eval()
    return Translator(model, src_model, tgt_model, config, str(path))


def load_translator(path: str | os.PathLike) -> Translator:
    return model_from_checkpoint(load_checkpoint(path), str(path))


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
    result = {k: v for k, v in payloads[-1].items() if k in ("format", "config", "spm", "version")}
    result["model"] = averaged
    result["averaged_from"] = [str(p) for p in paths]
    return result
