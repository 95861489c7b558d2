"""`nmt train`: the training loop, validation, checkpoints, early stopping and DDP.

The loop is written so that an interrupted run, resumed, ends with the same parameters as one left alone:
batches are a pure function of (seed, epoch), the position inside the epoch is saved, and so is every RNG.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import nmt
from nmt.checkpoint import average_checkpoints, load_checkpoint, model_from_checkpoint, save_atomic, stored_config
from nmt.config import Config, DecodeConfig, TrainConfig, save_config, to_dict
from nmt.data.batching import make_batches, shard
from nmt.data.cache import EncodedCorpus
from nmt.data.collate import Batch, collate
from nmt.data.corpus import describe_split, read_pairs
from nmt.data.prepare import PreparedData, prepare
from nmt.data.subword import PAD, Subword
from nmt.errors import NMTError
from nmt.loss import sequence_loss
from nmt.model.seq2seq import Seq2Seq, build_model
from nmt.precision import autocast, cpu_kind, dtype_name, resolve_device, resolve_dtype

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- schedules


def teacher_forcing_ratio(cfg: TrainConfig, update: int) -> float:
    """Scheduled sampling (Bengio et al., 2015): the probability of feeding the gold previous token."""
    if cfg.tf_schedule == "constant":
        return cfg.tf_ratio
    if cfg.tf_schedule == "linear":
        frac = min(1.0, update / max(1, cfg.tf_decay_updates))
        return max(cfg.tf_min, cfg.tf_ratio - (cfg.tf_ratio - cfg.tf_min) * frac)
    # inverse sigmoid: k / (k + exp(update / k)), with k solving k ln k = tf_decay_updates (Newton's method from
    # above) so that the ratio is tf_ratio / 2 at tf_decay_updates
    decay = max(1, cfg.tf_decay_updates)
    k = decay + 1.0
    for _ in range(60):
        k -= (k * math.log(k) - decay) / (math.log(k) + 1.0)
    return max(cfg.tf_min, cfg.tf_ratio * k / (k + math.exp(min(update / k, 700.0))))


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    # fused: one kernel for all parameters instead of a dozen small ones per tensor.
    return cls(model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, fused=True)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> Any:
    if cfg.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=cfg.plateau_factor, patience=cfg.plateau_patience, min_lr=cfg.min_lr)
    if cfg.schedule == "inverse_sqrt":
        warmup = max(1, cfg.warmup_updates)
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min((step + 1) / warmup, math.sqrt(warmup / (step + 1))))
    warmup = cfg.warmup_updates
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0)


# ----------------------------------------------------------------------------------------------- state


@dataclass
class Progress:
    """Where training is: saved in every checkpoint so a resumed run continues exactly here."""

    update: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # index of the next batch of this epoch's batch list
    tokens: int = 0
    train_seconds: float = 0.0
    best: list[tuple[float, int, str]] = field(default_factory=list)  # (bleu, update, path), best first
    best_bleu: float = float("-inf")
    bad_validations: int = 0
    bad_updates: int = 0
    finished: bool = False
    last_valid_update: int = -1


def rng_states() -> dict:
    states = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------------- distributed


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Dist:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size())


def all_reduce_sum(values: list[float], ddp: Dist, device: torch.device) -> list[float]:
    if ddp.world_size == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def broadcast_floats(values: list[float], ddp: Dist, device: torch.device) -> list[float]:
    if ddp.world_size == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.broadcast(tensor, src=0)
    return tensor.tolist()


# ----------------------------------------------------------------------------------------------- the trainer


class StopTraining(Exception):
    """Raised inside the loop to leave it cleanly (signals)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class Trainer:
    def __init__(self, cfg: Config, data: PreparedData, device: torch.device, ddp: Dist):
        self.cfg = cfg
        self.tcfg = cfg.train
        self.data = data
        self.device = device
        self.ddp = ddp
        self.exp = Path(cfg.exp_dir)
        self.ckpt_dir = self.exp / "checkpoints"
        self.dtype = resolve_dtype(self.tcfg.dtype, device)
        joint = data.src_model.model_bytes == data.tgt_model.model_bytes
        self.model: Seq2Seq = build_model(cfg.model, len(data.src_model), len(data.tgt_model), joint).to(device)
        self.net: nn.Module = (DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda"
                                                       else None) if ddp.world_size > 1 else self.model)
        self.optimizer = build_optimizer(self.model, self.tcfg)
        self.scheduler = build_scheduler(self.optimizer, self.tcfg)
        self.scaler = torch.amp.GradScaler("cuda", enabled=(device.type == "cuda" and self.dtype == torch.float16))
        self.progress = Progress()
        self.pending_signal: int | None = None
        self.valid_refs: list[str] | None = None
        self.tb = None
        self.started = time.time()
        self.metrics_path = self.exp / "metrics.jsonl"

    # ---------------------------------------------------------------- checkpoints

    def payload(self, with_training_state: bool = True) -> dict:
        payload = {
            "format": nmt.CHECKPOINT_FORMAT,
            "version": nmt.__version__,
            "config": to_dict(self.cfg),
            "spm": {"src": self.data.src_model.model_bytes, "tgt": self.data.tgt_model.model_bytes},
            "model": self.model.state_dict(),
        }
        if with_training_state:
            payload.update(
                optimizer=self.optimizer.state_dict(),
                scheduler=self.scheduler.state_dict(),
                scaler=self.scaler.state_dict(),
                rng=rng_states(),
                progress=vars(self.progress).copy(),
            )
        return payload

    def save(self, path: Path) -> None:
        if not self.ddp.main:
            return
        try:
            save_atomic(self.payload(), path)
        except OSError as err:
            raise NMTError(f"cannot write checkpoint {path} ({err.strerror or err}); the previous checkpoint "
                           "is intact, free some space and resume with --resume") from None

    def restore(self, payload: dict) -> None:
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.scaler.load_state_dict(payload["scaler"])
        set_rng_states(payload["rng"])
        self.progress = Progress(**payload["progress"])
        self.progress.best = [tuple(b) for b in self.progress.best]  # type: ignore[misc]

    def resume(self) -> bool:
        """Load the newest readable checkpoint; False when there is none."""
        if self.ddp.main:  # what a process killed in the middle of save_atomic left behind
            for stale in [*self.ckpt_dir.glob(".*.pt.tmp*"), *self.exp.glob(".final.pt.tmp*")]:
                stale.unlink(missing_ok=True)
        candidates = sorted(self.ckpt_dir.glob("*.pt"), key=lambda p: p.stat().st_mtime, reverse=True)
        last = self.ckpt_dir / "last.pt"
        if last in candidates:
            candidates.remove(last)
            candidates.insert(0, last)
        for i, path in enumerate(candidates):
            try:
                payload = load_checkpoint(path)
                if "optimizer" not in payload:
                    raise NMTError(f"{path}: holds no training state")
            except NMTError as err:
                log.warning("skipping checkpoint: %s", err)
                continue
            if i > 0:
                log.warning("resuming from %s, the newest good checkpoint", path)
            saved_scale = stored_config(payload).get("model", {}).get("scale_embeddings")
            if saved_scale is not None and saved_scale != self.cfg.model.scale_embeddings:
                raise NMTError(f"{path}: trained with model.scale_embeddings: {str(saved_scale).lower()}; set it "
                               "in the config to resume this run")
            try:
                self.restore(payload)
            except (RuntimeError, ValueError, KeyError) as err:  # e.g. resumed with another model config
                lines = str(err).strip().splitlines() or [type(err).__name__]
                raise NMTError(f"{path}: cannot resume from it with this config's model and vocabulary "
                               f"({lines[min(1, len(lines) - 1)].strip()[:200]})") from None
            log.info("resumed from %s at update %d (epoch %d, batch %d)", path, self.progress.update,
                     self.progress.epoch + 1, self.progress.batch_in_epoch)
            return True
        if candidates:  # starting afresh would overwrite them: let the user decide
            raise NMTError(f"no usable checkpoint in {self.ckpt_dir} ({len(candidates)} unreadable, see the "
                           "warnings above); move them away to start afresh")
        return False

    def keep_best(self, bleu: float) -> None:
        """Save a best-k checkpoint when `bleu` ranks among the k best, removing the one it displaces."""
        k = self.tcfg.keep_best
        best = self.progress.best
        if k <= 0 or (len(best) >= k and bleu <= best[-1][0]):
            return
        path = self.ckpt_dir / f"best_u{self.progress.update:07d}.pt"
        best.append((bleu, self.progress.update, str(path)))
        best.sort(key=lambda b: (-b[0], -b[1]))
        dropped = best[k:]
        del best[k:]
        self.save(path)
        if self.ddp.main:
            for _, _, old in dropped:
                Path(old).unlink(missing_ok=True)

    # ---------------------------------------------------------------- logging

    def log_metrics(self, record: dict) -> None:
        if not self.ddp.main:
            return
        record = {"time": round(time.time(), 3), **record}
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("update", "epoch", "time"):
                    self.tb.add_scalar(f"{record['kind']}/{key}", value, record["update"])

    # ---------------------------------------------------------------- one update

    def forward_loss(self, batch: Batch, tf_ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast(self.device, self.dtype):
            real = batch.tgt_out != PAD
            logits = self.net(batch.src, batch.src_lengths, batch.tgt_in, tf_ratio, real)  # (real tokens, vocab)
        return sequence_loss(logits, batch.tgt_out[real], self.tcfg.label_smoothing)

    def train_update(self, batch_indices: list[np.ndarray]) -> tuple[float, float, int]:
        """One optimiser update over `accum_steps` batches; returns (loss/token, nll/token, target tokens)."""
        self.net.train()
        tf_ratio = teacher_forcing_ratio(self.tcfg, self.progress.update)
        batches = [collate(self.data.train, shard(b, self.ddp.rank, self.ddp.world_size)).to(self.device)
                   for b in batch_indices]
        local_tokens = sum(b.n_tgt_tokens for b in batches)
        (total_tokens,) = all_reduce_sum([float(local_tokens)], self.ddp, self.device)
        # DDP averages gradients over ranks; scaling by world_size makes the result the gradient of
        # (summed loss over all ranks) / (all target tokens), exactly what one process would compute.
        scale = self.ddp.world_size / max(total_tokens, 1.0)
        loss_sum = nll_sum = 0.0
        for i, batch in enumerate(batches):
            sync = i == len(batches) - 1 or self.ddp.world_size == 1
            context = self.net.no_sync() if not sync else contextlib.nullcontext()
            with context:
                loss, nll = self.forward_loss(batch, tf_ratio)
                self.scaler.scale(loss * scale).backward()
            loss_sum += loss.item()
            nll_sum += nll.item()
        loss_sum, nll_sum = all_reduce_sum([loss_sum, nll_sum], self.ddp, self.device)
        self.scaler.unscale_(self.optimizer)
        norm = nn.utils.clip_grad_norm_(self.model.parameters(),
                                        self.tcfg.clip_norm if self.tcfg.clip_norm > 0 else float("inf"))
        finite = math.isfinite(loss_sum) and bool(torch.isfinite(norm))
        if finite or self.scaler.is_enabled():
            self.scaler.step(self.optimizer)  # the scaler itself skips non-finite fp16 steps
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if not finite:
            self.progress.bad_updates += 1
            log.warning("update %d: non-finite loss or gradient, skipped (%d in a row)",
                        self.progress.update + 1, self.progress.bad_updates)
            if self.progress.bad_updates >= self.tcfg.max_bad_updates:
                raise NMTError(f"{self.progress.bad_updates} non-finite updates in a row at update "
                               f"{self.progress.update + 1}: lower train.lr or check the data")
            return float("nan"), float("nan"), int(total_tokens)
        self.progress.bad_updates = 0
        if self.tcfg.schedule != "plateau":
            self.scheduler.step()
        return loss_sum / total_tokens, nll_sum / total_tokens, int(total_tokens)

    # ---------------------------------------------------------------- validation

    @torch.inference_mode()
    def validate(self) -> dict:
        self.model.eval()
        valid = self.data.valid
        batches = make_batches(valid.src_lengths + 1, valid.tgt_lengths + 1, self.tcfg.valid_max_tokens,
                               shuffle=False)
        loss_sum = nll_sum = tokens = 0.0
        for indices in batches:
            batch = collate(valid, indices).to(self.device)
            with autocast(self.device, self.dtype):
                logits = self.model(batch.src, batch.src_lengths, batch.tgt_in)
            loss, nll = sequence_loss(logits, batch.tgt_out, self.tcfg.label_smoothing)
            loss_sum += loss.item()
            nll_sum += nll.item()
            tokens += batch.n_tgt_tokens
        epochs_done = self.progress.epoch + (1 if self.progress.batch_in_epoch else 0)
        record = {"kind": "valid", "update": self.progress.update, "epoch": epochs_done,
                  "loss": loss_sum / tokens, "ppl": math.exp(min(nll_sum / tokens, 50.0))}
        if self.tcfg.valid_bleu:
            started = time.time()
            hyps = decode_corpus([self.model], self.data.tgt_model, valid, self.cfg.decode, self.device,
                                 self.dtype, beam=1, max_tokens=self.tcfg.valid_max_tokens)
            from nmt.evaluate import corpus_bleu

            record["bleu"] = corpus_bleu(hyps, self.valid_references())
            record["decode_seconds"] = round(time.time() - started, 2)
        return record

    def valid_references(self) -> list[str]:
        if self.valid_refs is None:
            _, self.valid_refs = read_pairs(self.cfg.data.valid, self.cfg.data.src_lang, self.cfg.data.tgt_lang)
        return self.valid_refs

    def after_validation(self, record: dict) -> bool:
        """Track the best dev BLEU (or loss) and decide on early stopping; True means stop."""
        score = record.get("bleu", -record["loss"])
        score, = broadcast_floats([score], self.ddp, self.device)
        if self.tcfg.schedule == "plateau":
            self.scheduler.step(score)
        improved = score > self.progress.best_bleu
        if improved:
            self.progress.best_bleu = score
            self.progress.bad_validations = 0
        else:
            self.progress.bad_validations += 1
        self.keep_best(score)
        if self.tcfg.stop_at_bleu and self.tcfg.valid_bleu and score >= self.tcfg.stop_at_bleu:
            log.info("dev BLEU %.2f reached train.stop_at_bleu %.2f: stopping", score, self.tcfg.stop_at_bleu)
            return True
        patience = self.tcfg.early_stop_patience
        return bool(patience and self.progress.bad_validations >= patience)

    # ---------------------------------------------------------------- the loop

    def out_of_budget(self) -> bool:
        t = self.tcfg
        if t.max_updates and self.progress.update >= t.max_updates:
            return True
        return bool(t.max_minutes and self.progress.train_seconds >= t.max_minutes * 60)

    def run(self) -> None:
        from tqdm import tqdm

        t = self.tcfg
        p = self.progress
        train = self.data.train
        src_len, tgt_len = train.src_lengths + 1, train.tgt_lengths + 1
        bar = tqdm(total=t.max_updates or None, initial=p.update, unit="upd", dynamic_ncols=True,
                   disable=None if self.ddp.main else True, mininterval=1.0)
        window_tokens, window_start = 0, time.time()
        loss_avg = math.nan  # stays nan until the first finite loss
        window_loss = [0.0, 0.0, 0]  # token-weighted sums of loss and nll, and their tokens, since the last log
        stop = False
        while not stop and p.epoch < t.max_epochs and not self.out_of_budget():
            batches = make_batches(src_len, tgt_len, t.max_tokens, seed=t.seed, epoch=p.epoch)
            # Every rank must hold a non-empty shard: drop the batches too small to split.
            batches = [b for b in batches if len(b) >= self.ddp.world_size]
            while p.batch_in_epoch < len(batches):
                tick = time.time()
                group = batches[p.batch_in_epoch: p.batch_in_epoch + t.accum_steps]
                loss, nll, tokens = self.train_update(group)
                p.batch_in_epoch += len(group)
                p.update += 1
                p.tokens += tokens
                p.train_seconds += time.time() - tick
                window_tokens += tokens
                if math.isfinite(loss):
                    loss_avg = loss if math.isnan(loss_avg) else 0.95 * loss_avg + 0.05 * loss
                    window_loss = [window_loss[0] + loss * tokens, window_loss[1] + nll * tokens,
                                   window_loss[2] + tokens]
                lr = self.optimizer.param_groups[0]["lr"]
                bar.update(1)
                if p.update % t.log_every == 0 or p.update == 1:
                    elapsed = max(time.time() - window_start, 1e-9)
                    tok_s = window_tokens / elapsed
                    bar.set_postfix(loss=f"{loss_avg:.3f}", tok_s=f"{tok_s:,.0f}", lr=f"{lr:.2e}",
                                    ep=p.epoch + 1, refresh=False)
                    # The mean over the updates since the last record, so that the curve is not one noisy batch.
                    mean_loss = window_loss[0] / window_loss[2] if window_loss[2] else math.nan
                    mean_nll = window_loss[1] / window_loss[2] if window_loss[2] else math.nan
                    window_loss = [0.0, 0.0, 0]
                    self.log_metrics({"kind": "train", "update": p.update, "epoch": p.epoch + 1,
                                      "loss": mean_loss if math.isfinite(mean_loss) else None,
                                      "nll": mean_nll if math.isfinite(mean_nll) else None,
                                      "ppl": math.exp(min(mean_nll, 50.0)) if math.isfinite(mean_nll) else None,
                                      "lr": lr, "tok_s": tok_s, "tf_ratio": teacher_forcing_ratio(t, p.update)})
                    if bar.disable and self.ddp.main:
                        log.info("epoch %d update %d loss %.3f lr %.2e %.0f tok/s", p.epoch + 1, p.update,
                                 loss_avg, lr, tok_s)
                    window_tokens, window_start = 0, time.time()
                if t.valid_every and p.update % t.valid_every == 0:
                    stop = self.validate_and_save(bar)
                    window_tokens, window_start = 0, time.time()
                if self.pending_signal is not None:
                    raise StopTraining(self.pending_signal)
                if stop or self.out_of_budget():
                    break
            else:
                p.epoch += 1
                p.batch_in_epoch = 0
                if not t.valid_every:
                    stop = self.validate_and_save(bar)
                    window_tokens, window_start = 0, time.time()
                continue
            break
        bar.close()
        if p.last_valid_update != p.update:  # stopped by a budget between validations: the last updates count
            self.validate_and_save(None)
        p.finished = True
        self.save(self.ckpt_dir / "last.pt")

    def validate_and_save(self, bar: Any) -> bool:
        record = self.validate() if self.ddp.main else {"loss": 0.0}
        self.progress.last_valid_update = self.progress.update
        stop = self.after_validation(record)
        p = self.progress
        if self.ddp.main:
            record.update(best_bleu=p.best_bleu, lr=self.optimizer.param_groups[0]["lr"],
                          train_minutes=round(p.train_seconds / 60, 2))
            self.log_metrics(record)
            message = (f"valid update {p.update} epoch {record['epoch']}: loss {record['loss']:.3f} "
                       f"ppl {record['ppl']:.2f}" + (f" bleu {record['bleu']:.2f}" if "bleu" in record else ""))
            (bar.write if bar is not None and not bar.disable else log.info)(message)
        self.save(self.ckpt_dir / "last.pt")
        return stop

    def write_final(self) -> Path:
        """final.pt: the average of the best k checkpoints, or the best one; without training state."""
        final = self.exp / "final.pt"
        if not self.ddp.main:
            return final
        best_paths = [path for _, _, path in self.progress.best if Path(path).exists()]
        k = self.tcfg.average_best
        if k > 1 and len(best_paths) > 1:
            payload = average_checkpoints(best_paths[:k])
            log.info("final.pt averages %d checkpoints: %s", min(k, len(best_paths)), ", ".join(best_paths[:k]))
        else:
            source = best_paths[0] if best_paths else str(self.ckpt_dir / "last.pt")
            full = load_checkpoint(source)
            payload = {k2: full[k2] for k2 in ("format", "version", "config", "spm", "model")}
            log.info("final.pt is %s", source)
        save_atomic(payload, final)
        return final


def decode_corpus(models: list[Seq2Seq], tgt_model: Subword, corpus: EncodedCorpus, decode: DecodeConfig,
                  device: torch.device, dtype: torch.dtype, beam: int, max_tokens: int) -> list[str]:
    """Translate an encoded corpus in length-sorted batches; detokenised strings in corpus order."""
    from nmt.data.collate import pad_sources
    from nmt.search import translate_batch

    lengths = corpus.src_lengths + 1
    batches = make_batches(lengths, lengths, max_tokens, shuffle=False)
    out: list[str] = [""] * len(corpus)
    for indices in batches:
        src, src_lengths = pad_sources([corpus.src(i) for i in indices])
        with autocast(device, dtype):
            hyps = translate_batch(models, src.to(device), src_lengths, beam=beam, max_len_a=decode.max_len_a,
                                   max_len_b=decode.max_len_b, min_len=decode.min_len, alpha=decode.alpha,
                                   length_penalty=decode.length_penalty)
        texts = tgt_model.decode([h[0].tokens for h in hyps])
        for i, text in zip(indices, texts):
            out[i] = text
    return out


# Validation decodes step by step with attention over the whole source, so its cost grows with the product of
# the lengths: one runaway dev line (a document, a blob without line breaks) would stall it for hours and
# exhaust memory. Dev sentences are not cleaned (that would change the score), so refuse such a line instead.
MAX_DEV_TOKENS = 1024


def check_dev_lengths(cfg: Config, data: PreparedData) -> None:
    lengths = np.maximum(data.valid.src_lengths, data.valid.tgt_lengths)
    if len(lengths) and int(lengths.max()) > MAX_DEV_TOKENS:
        i = int(np.argmax(lengths))
        raise NMTError(f"valid split ({describe_split(cfg.data.valid)}) line {int(data.valid.line_numbers[i])}: "
                       f"{int(lengths[i])} subwords, more than the {MAX_DEV_TOKENS} a dev sentence may have")


def _install_signal_handlers(trainer: Trainer) -> dict:
    def handler(signum: int, frame: Any) -> None:
        if trainer.pending_signal is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        trainer.pending_signal = signum
        log.warning("received %s: saving a checkpoint after this update", signal.Signals(signum).name)

    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[signum] = signal.signal(signum, handler)
        except ValueError:  # not the main thread
            pass
    return previous


def train(cfg: Config, resume: bool = False, run_tests: bool = True) -> int:
    """Train as `cfg` says; returns the process exit code (130/143 after a signal, having saved)."""
    device = resolve_device(cfg.train.device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    ddp = init_distributed(device)
    if device.type == "cuda" and ddp.world_size > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    exp = Path(cfg.exp_dir)
    if ddp.main:
        exp.mkdir(parents=True, exist_ok=True)
        if not resume and (exp / "checkpoints" / "last.pt").exists():
            raise NMTError(f"{exp} already holds a run; use --resume to continue it, or another exp_dir")
        if resume:
            saved = exp / "config.yaml"
            if saved.exists():
                log.info("resuming with the config given on the command line (%s holds the original)", saved)
        save_config(cfg, exp / "config.yaml")
    if ddp.main:
        data = prepare(cfg)
    if ddp.world_size > 1:
        dist.barrier()
    if not ddp.main:
        data = prepare(cfg)
    check_dev_lengths(cfg, data)
    seed_everything(cfg.train.seed)
    trainer = Trainer(cfg, data, device, ddp)
    if ddp.main:
        try:
            from torch.utils.tensorboard import SummaryWriter

            if cfg.train.tensorboard:
                trainer.tb = SummaryWriter(str(exp / "tensorboard"))
        except ImportError:
            pass
    if resume and not trainer.resume():
        log.info("no checkpoint to resume from in %s: starting afresh", exp / "checkpoints")
    n_params = sum(p.numel() for p in trainer.model.parameters())
    if ddp.main:
        log.info("model: %s parameters; device %s (%s); dtype %s; %d thread(s); %d process(es)", f"{n_params:,}",
                 device, cpu_kind() if device.type == "cpu" else torch.cuda.get_device_name(device),
                 dtype_name(trainer.dtype), torch.get_num_threads(), ddp.world_size)
        log.info("train: %d pairs; valid: %d pairs; padding efficiency %.3f", len(data.train), len(data.valid),
                 data.efficiency)
    previous = _install_signal_handlers(trainer)
    code = 0
    try:
        progress, limits = trainer.progress, cfg.train
        if progress.finished and not trainer.out_of_budget() and progress.epoch < limits.max_epochs and not (
                limits.early_stop_patience and progress.bad_validations >= limits.early_stop_patience):
            log.info("continuing a finished run: its budget (max_updates/max_epochs/max_minutes) was raised")
            progress.finished = False
        if not progress.finished:
            trainer.run()
    except StopTraining as stop:
        trainer.save(trainer.ckpt_dir / "last.pt")
        if ddp.main:
            log.warning("saved %s at update %d; continue with: nmt train CONFIG --resume",
                        trainer.ckpt_dir / "last.pt", trainer.progress.update)
        code = 128 + stop.signum
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
        if trainer.tb is not None:
            trainer.tb.close()
    if code:
        return code
    final = trainer.write_final()
    if ddp.main:
        log.info("training done: %d updates, %.1f minutes of training, best dev %s %.2f", trainer.progress.update,
                 trainer.progress.train_seconds / 60, "BLEU" if cfg.train.valid_bleu else "-loss",
                 trainer.progress.best_bleu)
        if run_tests and cfg.data.test:
            results = evaluate_tests(cfg, str(final))
            for name, scores in results.items():
                print(f"{name}: " + "  ".join(f"{k} {v}" for k, v in scores.items() if not isinstance(v, dict)))
    if ddp.world_size > 1:
        dist.barrier()
        dist.destroy_process_group()
    return 0


def evaluate_tests(cfg: Config, checkpoint: str | None = None) -> dict:
    """Translate every test set with `checkpoint` (default EXP/final.pt) and write EXP/results.json."""
    from nmt.evaluate import score_corpus
    from nmt.translate import translate_sentences

    exp = Path(cfg.exp_dir)
    checkpoint = checkpoint or str(exp / "final.pt")
    translator = model_from_checkpoint(load_checkpoint(checkpoint), checkpoint)
    device = resolve_device(cfg.train.device)
    dtype = resolve_dtype(cfg.train.dtype, device)
    translator.model.to(device)
    results_path = exp / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    (exp / "test").mkdir(parents=True, exist_ok=True)
    for name, spec in cfg.data.test.items():
        sources, references = read_pairs(spec, cfg.data.src_lang, cfg.data.tgt_lang)
        started = time.time()
        hyps = translate_sentences([translator.model], translator.src_model, translator.tgt_model, sources,
                                   cfg.decode, device, dtype, cfg.decode.batch_tokens)
        seconds = time.time() - started
        texts = [h[0].text if h else "" for h in hyps]
        (exp / "test" / f"{name}.hyp").write_text("".join(t + "\n" for t in texts), encoding="utf-8")
        scores = score_corpus(texts, references)
        exact = sum(h == r for h, r in zip(texts, references)) / max(len(references), 1)
        results[name] = {"bleu": round(scores["bleu"], 2), "chrf": round(scores["chrf"], 2),
                         "ter": round(scores["ter"], 2), "exact_match": round(exact, 4),
                         "beam": cfg.decode.beam, "sentences": len(texts),
                         "decode_seconds": round(seconds, 1), "dtype": dtype_name(dtype),
                         "device": cpu_kind() if device.type == "cpu" else torch.cuda.get_device_name(device),
                         "checkpoint": checkpoint, "signature": scores["signature"]}
    results_path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results
