"""`nmt train`: the training loop, validation, checkpoints, early stopping and DDP.

The loop is written so that an interrupted run, resumed, ends with the same parameters as one left alone:
batches are a pure function of (seed, epoch), the position inside the epoch is saved, and so is every RNG.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import random
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from nmt.checkpoint import (TrainedModel, average_checkpoints, inference_part, inference_payload,
                            load_checkpoint, load_training_checkpoint, numpy_rng_state, resume_candidates,
                            save_atomic, stored_config, training_payload)
from nmt.config import Config, TrainConfig, save_config
from nmt.data.batching import make_batches, shard
from nmt.data.collate import Batch, collate
from nmt.data.corpus import describe_split, read_pairs
from nmt.data.prepare import PreparedData, prepare
from nmt.distributed import Dist, all_reduce_sum, barrier, broadcast_floats, init_distributed, shut_down
from nmt.errors import NMTError
from nmt.loss import sequence_loss
from nmt.model.seq2seq import Seq2Seq, build_model
from nmt.outputs import WriteError
from nmt.precision import autocast, describe_device, dtype_name, resolve_device, resolve_dtype
from nmt.tokens import MAX_LINE_SUBWORDS, PAD, with_eos

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
    np.random.set_state(numpy_rng_state(states["numpy"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------------- the trainer


class LogWindow:
    """What the progress bar and metrics.jsonl report: target tokens per second since the window restarted
    (after each record and each validation), the token-weighted mean loss and nll since the last record (so
    that a curve is not one noisy batch), and a running average of the loss for the bar (nan until the first
    finite loss). Non-finite (skipped) updates count for speed, not for the losses."""

    def __init__(self) -> None:
        self.loss_avg = math.nan
        self.loss_sum = self.nll_sum = 0.0
        self.loss_tokens = 0
        self.restart()

    def restart(self) -> None:
        self.tokens, self.started = 0, time.time()

    def add(self, loss: float, nll: float, tokens: int) -> None:
        self.tokens += tokens
        if math.isfinite(loss):
            self.loss_avg = loss if math.isnan(self.loss_avg) else 0.95 * self.loss_avg + 0.05 * loss
            self.loss_sum += loss * tokens
            self.nll_sum += nll * tokens
            self.loss_tokens += tokens

    def tokens_per_second(self) -> float:
        return self.tokens / max(time.time() - self.started, 1e-9)

    def take_means(self) -> tuple[float, float]:
        """(mean loss, mean nll) since the last call, nan when no finite update came in between."""
        if not self.loss_tokens:
            return math.nan, math.nan
        means = self.loss_sum / self.loss_tokens, self.nll_sum / self.loss_tokens
        self.loss_sum = self.nll_sum = 0.0
        self.loss_tokens = 0
        return means


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

    def payload(self) -> dict:
        """A training checkpoint of this moment (see `nmt.checkpoint`)."""
        weights = inference_payload(self.cfg, self.data.src_model, self.data.tgt_model, self.model)
        return training_payload(weights, self.optimizer.state_dict(), self.scheduler.state_dict(),
                                self.scaler.state_dict(), rng_states(), vars(self.progress).copy())

    def save(self, path: Path) -> None:
        if not self.ddp.main:
            return
        try:
            save_atomic(self.payload(), path)
        except WriteError as err:
            raise NMTError(f"cannot write checkpoint {path} ({err.reason}); the previous checkpoint is intact, "
                           "free some space and resume with --resume") from None

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
        candidates = resume_candidates(self.ckpt_dir) if self.ddp.main else sorted(self.ckpt_dir.glob("*.pt"))
        for i, path in enumerate(candidates):
            try:
                payload = load_training_checkpoint(path)
            except NMTError as err:
                log.warning("skipping checkpoint: %s", err)
                continue
            if i > 0:
                log.warning("resuming from %s, the newest good checkpoint", path)
            self._check_resumable(path, payload)
            log.info("resumed from %s at update %d (epoch %d, batch %d)", path, self.progress.update,
                     self.progress.epoch + 1, self.progress.batch_in_epoch)
            return True
        if candidates:  # starting afresh would overwrite them: let the user decide
            raise NMTError(f"no usable checkpoint in {self.ckpt_dir} ({len(candidates)} unreadable, see the "
                           "warnings above); move them away to start afresh")
        return False

    def _check_resumable(self, path: Path, payload: dict) -> None:
        """Restore `payload`, refusing (with the reason) a checkpoint this config cannot continue."""
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
        batches = make_batches(with_eos(valid.src_lengths), with_eos(valid.tgt_lengths), self.tcfg.valid_max_tokens,
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
            from nmt.evaluate import corpus_bleu

            started = time.time()
            record["bleu"] = corpus_bleu(self.translate_dev_set(), self.valid_references())
            record["decode_seconds"] = round(time.time() - started, 2)
        return record

    def translate_dev_set(self) -> list[str]:
        """Greedy translations of the dev sources, through the same `Translator` as `nmt translate`."""
        from nmt.translator import Translator

        decode = dataclasses.replace(self.cfg.decode, beam=1, nbest=1, greedy_floor=False, temperature=None,
                                     batch_tokens=self.tcfg.valid_max_tokens)
        model = TrainedModel(self.model, self.data.src_model, self.data.tgt_model, self.cfg)
        translator = Translator([model], decode, self.device, self.dtype)
        valid = self.data.valid
        return [hyps[0].text for hyps in translator.translate_encoded([valid.src(i) for i in range(len(valid))])]

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

    @contextlib.contextmanager
    def tensorboard(self) -> Iterator[None]:
        """TensorBoard scalars beside metrics.jsonl, when it is installed and `train.tensorboard` is on."""
        if self.ddp.main and self.tcfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.exp / "tensorboard"))
            except ImportError:
                pass
        try:
            yield
        finally:
            if self.tb is not None:
                self.tb.close()

    def log_start(self) -> None:
        if not self.ddp.main:
            return
        n_params = sum(p.numel() for p in self.model.parameters())
        log.info("model: %s parameters; device %s (%s); dtype %s; %d thread(s); %d process(es)", f"{n_params:,}",
                 self.device, describe_device(self.device), dtype_name(self.dtype), torch.get_num_threads(),
                 self.ddp.world_size)
        log.info("train: %d pairs; valid: %d pairs; padding efficiency %.3f", len(self.data.train),
                 len(self.data.valid), self.data.efficiency)

    def run_unless_finished(self) -> None:
        """Run, or continue a finished run whose budget (max_updates/max_epochs/max_minutes) was raised."""
        p, t = self.progress, self.tcfg
        if p.finished and not self.out_of_budget() and p.epoch < t.max_epochs and not (
                t.early_stop_patience and p.bad_validations >= t.early_stop_patience):
            log.info("continuing a finished run: its budget (max_updates/max_epochs/max_minutes) was raised")
            p.finished = False
        if not p.finished:
            self.run()

    def out_of_budget(self) -> bool:
        t = self.tcfg
        if t.max_updates and self.progress.update >= t.max_updates:
            return True
        return bool(t.max_minutes and self.progress.train_seconds >= t.max_minutes * 60)

    def run(self) -> None:
        """Train until a budget, early stopping or a signal ends the run; validate at the end, save last.pt."""
        from tqdm import tqdm

        p = self.progress
        bar = tqdm(total=self.tcfg.max_updates or None, initial=p.update, unit="upd", dynamic_ncols=True,
                   disable=None if self.ddp.main else True, mininterval=1.0)
        window = LogWindow()
        stop = False
        while not stop and p.epoch < self.tcfg.max_epochs and not self.out_of_budget():
            stop = self.run_epoch(bar, window)
        bar.close()
        if p.last_valid_update != p.update:  # stopped by a budget between validations: the last updates count
            self.validate_and_save(None)
        p.finished = True
        self.save(self.ckpt_dir / "last.pt")

    def run_epoch(self, bar: Any, window: LogWindow) -> bool:
        """The rest of the current epoch, from `progress.batch_in_epoch`; True means stop training."""
        t, p = self.tcfg, self.progress
        batches = self.epoch_batches()
        while p.batch_in_epoch < len(batches):
            window.add(*self.timed_update(batches[p.batch_in_epoch: p.batch_in_epoch + t.accum_steps]))
            bar.update(1)
            if p.update % t.log_every == 0 or p.update == 1:
                self.log_train(bar, window)
            stop = bool(t.valid_every and p.update % t.valid_every == 0) and self.validate_and_save(bar, window)
            if self.pending_signal is not None:
                raise StopTraining(self.pending_signal)
            if stop or self.out_of_budget():
                return stop
        p.epoch += 1
        p.batch_in_epoch = 0
        return not t.valid_every and self.validate_and_save(bar, window)

    def epoch_batches(self) -> list[np.ndarray]:
        """The current epoch's batches: a pure function of (seed, epoch), so a resumed run gets the same ones."""
        train = self.data.train
        batches = make_batches(with_eos(train.src_lengths), with_eos(train.tgt_lengths), self.tcfg.max_tokens,
                               seed=self.tcfg.seed, epoch=self.progress.epoch)
        # Every rank must hold a non-empty shard: drop the batches too small to split.
        return [b for b in batches if len(b) >= self.ddp.world_size]

    def timed_update(self, group: list[np.ndarray]) -> tuple[float, float, int]:
        """`train_update` on a group of batches, with the progress counters moved past it."""
        p = self.progress
        tick = time.time()
        loss, nll, tokens = self.train_update(group)
        p.batch_in_epoch += len(group)
        p.update += 1
        p.tokens += tokens
        p.train_seconds += time.time() - tick
        return loss, nll, tokens

    def log_train(self, bar: Any, window: LogWindow) -> None:
        """One `train` record in metrics.jsonl (means since the last one) and the progress bar's figures."""
        p = self.progress
        lr = self.optimizer.param_groups[0]["lr"]
        tok_s = window.tokens_per_second()
        bar.set_postfix(loss=f"{window.loss_avg:.3f}", tok_s=f"{tok_s:,.0f}", lr=f"{lr:.2e}", ep=p.epoch + 1,
                        refresh=False)
        mean_loss, mean_nll = window.take_means()
        finite = math.isfinite(mean_nll)
        self.log_metrics({"kind": "train", "update": p.update, "epoch": p.epoch + 1,
                          "loss": mean_loss if math.isfinite(mean_loss) else None, "nll": mean_nll if finite else None,
                          "ppl": math.exp(min(mean_nll, 50.0)) if finite else None, "lr": lr, "tok_s": tok_s,
                          "tf_ratio": teacher_forcing_ratio(self.tcfg, p.update)})
        if bar.disable and self.ddp.main:
            log.info("epoch %d update %d loss %.3f lr %.2e %.0f tok/s", p.epoch + 1, p.update, window.loss_avg, lr,
                     tok_s)
        window.restart()

    def validate_and_save(self, bar: Any, window: LogWindow | None = None) -> bool:
        """Validate, track the best checkpoints, log and save last.pt; True means stop (early stopping)."""
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
        if window is not None:
            window.restart()  # validation is not training time: tokens/s restarts after it
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
            payload = inference_part(load_checkpoint(source))
            log.info("final.pt is %s", source)
        save_atomic(payload, final)
        return final


def check_dev_lengths(cfg: Config, data: PreparedData) -> None:
    """Validation decodes step by step with attention over the whole source, so its cost grows with the
    product of the lengths: one runaway dev line would stall it for hours and exhaust memory. Dev sentences are
    not cleaned (that would change the score), so such a line is refused instead."""
    lengths = np.maximum(data.valid.src_lengths, data.valid.tgt_lengths)
    if len(lengths) and int(lengths.max()) > MAX_LINE_SUBWORDS:
        i = int(np.argmax(lengths))
        raise NMTError(f"valid split ({describe_split(cfg.data.valid)}) line {int(data.valid.line_numbers[i])}: "
                       f"{int(lengths[i])} subwords, more than the {MAX_LINE_SUBWORDS} a dev sentence may have")


def warn_about_settings(cfg: Config, data: PreparedData) -> None:
    """Settings that are legal but probably not what the user meant get one warning each."""
    t, train_split = cfg.train, data.train
    widths = np.maximum(with_eos(train_split.src_lengths), with_eos(train_split.tgt_lengths))
    alone = int((widths > t.max_tokens).sum())
    if alone:
        log.warning("%d training sentences are longer than train.max_tokens (%d subwords, the longest has %d): "
                    "each goes alone into a batch larger than the budget", alone, t.max_tokens, int(widths.max()))
    if t.lr == 0:
        log.warning("train.lr is 0: the parameters will not change")


def set_up_exp_dir(cfg: Config, resume: bool) -> None:
    """The experiment folder's policy: create it, refuse a second run into a folder that holds one, and record
    the config the run uses (the overrides included)."""
    exp = Path(cfg.exp_dir)
    if exp.exists() and not exp.is_dir():
        raise NMTError(f"exp_dir {exp} is a file, not a folder; choose another exp_dir")
    try:
        exp.mkdir(parents=True, exist_ok=True)
        if not resume and (exp / "checkpoints" / "last.pt").exists():
            raise NMTError(f"{exp} already holds a run; use --resume to continue it, or another exp_dir")
        if resume and (exp / "config.yaml").exists():
            log.info("resuming with the config given on the command line (%s held the original)",
                     exp / "config.yaml")
        save_config(cfg, exp / "config.yaml")
    except OSError as err:
        raise NMTError(f"exp_dir {exp}: cannot write the experiment folder ({err.strerror or err})") from None


def prepare_on_every_rank(cfg: Config, ddp: Dist) -> PreparedData:
    """The main process prepares (trains SentencePiece, fills the cache); the others then read the cache."""
    data = prepare(cfg) if ddp.main else None
    barrier(ddp)
    return data if data is not None else prepare(cfg)


@contextlib.contextmanager
def signals_save_first(trainer: Trainer) -> Iterator[None]:
    """SIGINT and SIGTERM ask the trainer to save after the update in flight; a second one stops at once."""

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
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def train(cfg: Config, resume: bool = False, run_tests: bool = True) -> int:
    """Train as `cfg` says; returns the process exit code (130/143 after a signal, having saved)."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    ddp, device = init_distributed(resolve_device(cfg.train.device))
    if ddp.main:
        set_up_exp_dir(cfg, resume)
    data = prepare_on_every_rank(cfg, ddp)
    check_dev_lengths(cfg, data)
    if ddp.main:
        warn_about_settings(cfg, data)
    seed_everything(cfg.train.seed)
    trainer = Trainer(cfg, data, device, ddp)
    with trainer.tensorboard(), signals_save_first(trainer):
        if resume and not trainer.resume():
            log.info("no checkpoint to resume from in %s: starting afresh", trainer.ckpt_dir)
        trainer.log_start()
        try:
            trainer.run_unless_finished()
        except StopTraining as stop:
            trainer.save(trainer.ckpt_dir / "last.pt")
            if ddp.main:
                log.warning("saved %s at update %d; continue with: nmt train CONFIG --resume",
                            trainer.ckpt_dir / "last.pt", trainer.progress.update)
            return 128 + stop.signum
    final = trainer.write_final()
    if ddp.main:
        log.info("training done: %d updates, %.1f minutes of training, best dev %s %.2f", trainer.progress.update,
                 trainer.progress.train_seconds / 60, "BLEU" if cfg.train.valid_bleu else "-loss",
                 trainer.progress.best_bleu)
        if run_tests and cfg.data.test:
            from nmt.evaluate import evaluate_tests

            for name, scores in evaluate_tests(cfg, str(final)).items():
                print(f"{name}: " + "  ".join(f"{k} {v}" for k, v in scores.items() if not isinstance(v, dict)))
    shut_down(ddp)
    return 0
