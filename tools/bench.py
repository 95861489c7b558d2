"""Side-by-side speed benchmark of nmt against Joey NMT 2.3.0 (the peer), on the same data, subwords and model.

    python tools/bench.py            # the full benchmark (the first run also fills --cache: see docs/BENCHMARKS.md)
    python tools/bench.py --quick    # fewer timed updates, half of test2016; reuses the cached models
    python tools/bench.py --skip-peer --quick    # ours alone

What it measures, each system in processes of its own (so that peak memory is per process):
  - the machine's fp32 and bf16 matrix-product rates (GFLOP/s), a few shapes typical of the model;
  - training: real (non-padding) target tokens per second over a fixed number of updates after warm-up, the real
    target tokens per update (Joey's token batch size is raised until it matches ours), seconds per epoch
    (the epoch's target tokens over that rate), peak resident memory;
  - decoding test2016, greedy and beam 5: sentences per second with each system's BLEU and mean output length,
    on models the bench trained to a dev BLEU of at least --target-bleu, kept in --cache for later runs;
  - the fraction of the faster matrix-product rate that our training and beam-5 decoding reach, counting the
    model's FLOPs (`ModelDims` and the functions below it).
Ours runs in fp32 and with dtype auto (bf16 where the CPU multiplies bf16 fast); bf16 counts as the headline only
where its dev BLEU stays within 0.3 of fp32's. The last line printed is one JSON object with every figure.

The peer lives in its own virtual environment in the cache (torch 2.13.0, joeynmt 2.3.0, sentencepiece<0.2,
importlib_metadata). Its part of this file runs under that environment's Python through the hidden `_worker`
subcommand, so nothing at module level imports torch, nmt or joeynmt.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import hashlib
import json
import logging
import math
import os
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("bench")

REPO = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve()
SPLITS = ("train", "valid", "test2016")
SRC, TGT = "de", "en"

PEER = "Joey NMT 2.3.0"
# Installed in this order; torch first, so that joeynmt's `torch>=...` is met by the local 2.13.0 wheel.
PEER_PACKAGES = (("torch==2.13.0",), ("joeynmt==2.3.0", "sentencepiece<0.2", "importlib_metadata"))

# ----------------------------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class ModelDims:
    """The benchmarked model, the same for both systems: a bidirectional LSTM encoder (256 per direction), a GRU
    decoder (512) with Bahdanau attention (512, Joey's fixed size) and input feeding, embeddings 256, no tying."""

    emb: int = 256
    enc_hidden: int = 256  # per direction
    dec_hidden: int = 512
    attention: int = 512
    vocab: int = 8000
    dropout: float = 0.2
    enc_gates: int = 4  # LSTM
    dec_gates: int = 3  # GRU


def encoder_flops_per_source_token(d: ModelDims) -> float:
    """Forward FLOPs per source token (EOS included), 2 per multiply-add:

        2 * ( 2 * enc_gates * enc_hidden * (emb + enc_hidden)     both LSTM directions, input and recurrent
            + (2 * enc_hidden) * attention )                     attention keys, projected once per batch
    """
    return 2.0 * (2 * d.enc_gates * d.enc_hidden * (d.emb + d.enc_hidden) + 2 * d.enc_hidden * d.attention)


def bridge_flops_per_sentence(d: ModelDims) -> float:
    """Forward FLOPs of the decoder's initial state: 2 * (2 * enc_hidden) * dec_hidden."""
    return 2.0 * 2 * d.enc_hidden * d.dec_hidden


def decoder_flops_per_step(d: ModelDims, src_len: float) -> float:
    """Forward FLOPs of one decoder step, i.e. per target token in training and per hypothesis token in search,
    attending over `src_len` real source positions:

        2 * ( dec_gates * dec_hidden * (emb + dec_hidden)     GRU input: embedding and fed attentional vector
            + dec_gates * dec_hidden * dec_hidden             GRU recurrent
            + dec_hidden * attention                          attention query
            + src_len * (attention + 2 * enc_hidden)          scores v.tanh(.) and context, per source position
            + (dec_hidden + 2 * enc_hidden) * dec_hidden      attentional layer tanh(W [h; context])
            + dec_hidden * vocab )                            vocabulary projection: most of the total
    """
    fixed = (d.dec_gates * d.dec_hidden * (d.emb + d.dec_hidden) + d.dec_gates * d.dec_hidden * d.dec_hidden
             + d.dec_hidden * d.attention + (d.dec_hidden + 2 * d.enc_hidden) * d.dec_hidden
             + d.dec_hidden * d.vocab)
    return 2.0 * (fixed + src_len * (d.attention + 2 * d.enc_hidden))


def train_flops_per_target_token(d: ModelDims, src_lengths: list[int], tgt_lengths: list[int]) -> float:
    """Training FLOPs per real target token over a corpus (lengths count EOS), backward = 2 x forward:

        3 * sum_i [ src_i * encoder_per_source_token + bridge + tgt_i * decoder_step(src_i) ] / sum_i tgt_i
    """
    forward = sum(s * encoder_flops_per_source_token(d) + bridge_flops_per_sentence(d)
                  + t * decoder_flops_per_step(d, s) for s, t in zip(src_lengths, tgt_lengths))
    return 3.0 * forward / max(sum(tgt_lengths), 1)


def search_flops(d: ModelDims, sentences: int, src_tokens: int, hyp_tokens: int, hyp_src_positions: int) -> float:
    """Forward FLOPs of a search: every sentence encoded once, every hypothesis token one decoder step.

        src_tokens * encoder_per_source_token + sentences * bridge
          + hyp_tokens * decoder_step(0) + 2 * hyp_src_positions * (attention + 2 * enc_hidden)
    where hyp_src_positions sums, over the hypothesis tokens, the real source length they attend over.
    """
    return (src_tokens * encoder_flops_per_source_token(d) + sentences * bridge_flops_per_sentence(d)
            + hyp_tokens * decoder_flops_per_step(d, 0.0) + 2.0 * hyp_src_positions * (d.attention + 2 * d.enc_hidden))


# ----------------------------------------------------------------------------------------------- the machine


def _cpuinfo_field(name: str) -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(name):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


@dataclass
class Machine:
    cpu: str
    capability: str
    avx512_bf16: bool
    threads: int
    device: str
    gpu: str = ""

    @classmethod
    def here(cls, threads: int, device: str) -> "Machine":
        import platform

        import torch

        gpu = torch.cuda.get_device_name() if device.startswith("cuda") and torch.cuda.is_available() else ""
        return cls(cpu=_cpuinfo_field("model name") or platform.processor() or "unknown CPU",
                   capability=torch.backends.cpu.get_cpu_capability(),
                   avx512_bf16="avx512_bf16" in _cpuinfo_field("flags").split(), threads=threads, device=device,
                   gpu=gpu)

    def describe(self) -> str:
        where = f"device {self.device} ({self.gpu})" if self.gpu else "device cpu"
        return (f"{self.cpu}, torch CPU capability {self.capability}, AVX512-BF16 "
                f"{'yes' if self.avx512_bf16 else 'no'}, {self.threads} thread(s), {where}")

    def tag(self, dtype: str) -> str:
        """Printed beside every figure: which CPU (and device) and which dtype produced it."""
        gpu = f" | {self.gpu}" if self.gpu else ""
        return f"[{self.cpu} | {self.capability} | AVX512-BF16 {'yes' if self.avx512_bf16 else 'no'}{gpu} | {dtype}]"


# ----------------------------------------------------------------------------------------------- settings


@dataclass
class Settings:
    cache: Path
    data_dir: Path
    quick: bool
    device: str
    threads: int
    skip_peer: bool
    warmup_updates: int
    updates: int
    decode_sentences: int  # 0: all of test2016
    dev_sentences: int  # 0: all of valid
    decode_batch_tokens: int
    target_bleu: float
    max_model_updates: int
    model_updates: int  # > 0: train the decoding models for exactly this many updates, no BLEU target
    valid_every: int
    peak_seconds: float
    dims: ModelDims = field(default_factory=ModelDims)
    # Training recipe shared by both systems: a constant learning rate, no warm-up (Joey's `exponential` with a
    # factor of 1.0, ours `constant`). Joey's plateau scheduler fails on torch 2.13, and the inverse square root
    # decay learned too slowly for a benchmark's first run (our model: dev BLEU 1.7 after 300 updates).
    lr: float = 1e-3
    label_smoothing: float = 0.1
    clip_norm: float = 1.0
    max_tokens: int = 4096
    seed: int = 1
    beam: int = 5
    beam_alpha: float = 1.0  # GNMT length penalty ((5 + len) / 6) ** alpha, Joey's `beam_alpha`


def parse_args(argv: list[str]) -> Settings:
    p = argparse.ArgumentParser(prog="tools/bench.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="10 timed updates after 2 warm-up, 500 test sentences; models as in the full run (cached)")
    p.add_argument("--cache", default=str(REPO / ".bench_cache"),
                   help="folder for the peer's venv, the prepared data and the trained models (default: "
                   ".bench_cache/ in the repository)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    p.add_argument("--threads", type=int, default=2, help="torch threads for every process (default: 2)")
    p.add_argument("--skip-peer", action="store_true", help="measure ours only (no Joey NMT install or runs)")
    p.add_argument("--warmup-updates", type=int, default=None, help="untimed updates first (default 5; quick 2)")
    p.add_argument("--updates", type=int, default=None, help="timed training updates (default 40; quick 10)")
    p.add_argument("--decode-sentences", type=int, default=None,
                   help="first N sentences of test2016 to decode (default: all 1000; quick 500)")
    p.add_argument("--dev-sentences", type=int, default=0,
                   help="first N sentences of valid for the dev BLEU during model training (default: all)")
    p.add_argument("--decode-batch-tokens", type=int, default=8000,
                   help="decoding batch size in tokens, both systems (default: 8000)")
    p.add_argument("--target-bleu", type=float, default=10.0,
                   help="train the decoding models until dev BLEU (greedy) reaches this (default: 10)")
    p.add_argument("--max-model-updates", type=int, default=3000,
                   help="give up on --target-bleu after this many updates (default: 3000)")
    p.add_argument("--model-updates", type=int, default=0,
                   help="smoke tests: train the decoding models for exactly N updates instead, with no BLEU "
                   "target (cached separately; their decoding speeds are not those of translating models)")
    p.add_argument("--valid-every", type=int, default=100, help="updates between dev BLEU checks (default: 100)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s bench %(levelname)s %(message)s", datefmt="%H:%M:%S")
    data_dir = Path(os.environ.get("NMT_DATA_DIR") or REPO.parent / "shared" / "data")
    for split in SPLITS:
        for lang in (SRC, TGT):
            if not (data_dir / "multi30k" / f"{split}.{lang}.gz").is_file():
                p.error(f"{data_dir}/multi30k/{split}.{lang}.gz not found: set NMT_DATA_DIR to the folder that "
                        "holds multi30k/")
    for name in ("threads", "decode_batch_tokens", "valid_every", "max_model_updates"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if a.model_updates < 0 or a.dev_sentences < 0:
        p.error("--model-updates and --dev-sentences must not be negative")
    warmup = a.warmup_updates if a.warmup_updates is not None else (2 if a.quick else 5)
    updates = a.updates if a.updates is not None else (10 if a.quick else 40)
    if updates < 1 or warmup < 0:
        p.error("--updates must be at least 1 and --warmup-updates not negative")
    decode = a.decode_sentences if a.decode_sentences is not None else (500 if a.quick else 0)
    return Settings(cache=Path(a.cache).resolve(), data_dir=data_dir.resolve(), quick=a.quick, device=a.device,
                    threads=a.threads, skip_peer=a.skip_peer, warmup_updates=warmup, updates=updates,
                    decode_sentences=decode, dev_sentences=a.dev_sentences, decode_batch_tokens=a.decode_batch_tokens,
                    target_bleu=a.target_bleu, max_model_updates=a.max_model_updates, model_updates=a.model_updates,
                    valid_every=a.valid_every, peak_seconds=0.3 if a.quick else 1.0)


# ----------------------------------------------------------------------------------------------- processes


def _thread_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    return env


def run_worker(python: Path | str, kind: str, spec: dict, workdir: Path, threads: int) -> dict:
    """Run `kind` in a process of its own (`python` picks the environment); returns the JSON it writes.

    The worker's stdout goes to our stderr: Joey NMT logs to stdout, and our stdout is for the figures.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    spec_path, out_path = workdir / f"{kind}.spec.json", workdir / f"{kind}.out.json"
    spec_path.write_text(json.dumps(spec, indent=1))
    out_path.unlink(missing_ok=True)
    log.info("running %s (%s)", kind, python)
    started = time.time()
    code = subprocess.run([str(python), str(BENCH), "_worker", kind, str(spec_path), str(out_path)],
                          stdout=sys.stderr, env=_thread_env(threads), cwd=REPO).returncode
    if code != 0 or not out_path.exists():
        raise SystemExit(f"bench: {kind} failed (exit code {code}); its log is above")
    result = json.loads(out_path.read_text())
    log.info("%s done in %.0fs", kind, time.time() - started)
    return result


def peak_rss_mb() -> float:
    """This process's peak resident set size (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _stable_hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:12]


# ----------------------------------------------------------------------------------------------- data


@dataclass
class Data:
    """The bench's data, shared by both systems."""

    plain: Path  # plain-text files {split}.{lang} (Joey reads plain text)
    prep_exp: Path  # nmt's prepared experiment folder: spm/ and cache/
    spm_model: Path
    joey_vocab: Path
    valid_prefix: Path  # plain valid files (a subset with --dev-sentences)
    test_prefix: Path  # plain test files (a subset with --decode-sentences)
    vocab_size: int
    # Per training pair, lengths counting EOS: ours after nmt's cleaning, and Joey's (its max_length filter only).
    src_lengths: list[int]
    tgt_lengths: list[int]
    joey_src_lengths: list[int]
    joey_tgt_lengths: list[int]
    ours_batch_tokens: list[int]  # real target tokens of each batch of our epoch 0


def _decompress(src: Path, dst: Path, max_lines: int = 0) -> None:
    if dst.exists():
        return
    tmp = dst.with_name(dst.name + ".tmp")
    with gzip.open(src, "rt", encoding="utf-8", newline="\n") as f, open(tmp, "w", encoding="utf-8",
                                                                         newline="\n") as out:
        for i, line in enumerate(f):
            if max_lines and i >= max_lines:
                break
            out.write(line)
    tmp.replace(dst)


def nmt_config(s: Settings, exp_dir: Path, data: "Data | None", dtype: str, **train: Any) -> dict:
    """Our config for the bench model (the same model as `joey_config`)."""
    d = s.dims
    multi30k = s.data_dir / "multi30k"
    if data is not None:  # plain text, possibly the first --dev-sentences
        valid = {"src": f"{data.valid_prefix}.{SRC}", "tgt": f"{data.valid_prefix}.{TGT}"}
    else:
        valid = {"src": str(multi30k / f"valid.{SRC}.gz"), "tgt": str(multi30k / f"valid.{TGT}.gz")}
    return {
        "exp_dir": str(exp_dir),
        "data": {
            "src_lang": SRC, "tgt_lang": TGT,
            "train": {"src": str(multi30k / f"train.{SRC}.gz"), "tgt": str(multi30k / f"train.{TGT}.gz")},
            "valid": valid,
            "subword": {"joint": True, "model_type": "unigram", "vocab_size": d.vocab},
        },
        "model": {"emb_dim": d.emb, "enc_hidden": d.enc_hidden, "dec_hidden": d.dec_hidden, "cell": "gru",
                  "attention": "bahdanau", "attention_dim": d.attention, "input_feeding": True, "bridge": "final",
                  "dropout": d.dropout, "emb_dropout": d.dropout, "tie_embeddings": "none",
                  "scale_embeddings": True},  # Joey's `scale: True`: lookups times sqrt(emb)
        "train": {"seed": s.seed, "device": s.device, "dtype": dtype, "threads": s.threads,
                  "max_tokens": s.max_tokens, "optimizer": "adam", "lr": s.lr, "schedule": "constant",
                  "warmup_updates": 0, "clip_norm": s.clip_norm,
                  "label_smoothing": s.label_smoothing, "keep_best": 1, "keep_last": 1, "average_best": 0,
                  "tensorboard": False, "log_every": 50, **train},
        "decode": {"beam": s.beam, "alpha": s.beam_alpha, "length_penalty": "gnmt", "max_len_a": 1.5,
                   "max_len_b": 10, "batch_tokens": s.decode_batch_tokens},
    }


def _write_yaml(value: dict, path: Path) -> Path:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(value, sort_keys=False), encoding="utf-8")
    return path


def prepare_data(s: Settings) -> Data:
    """Plain-text copies for Joey, our SentencePiece model and encoded corpus (`nmt prepare`'s work), Joey's
    vocabulary file derived from that model, and the batch statistics both systems' batch sizes are matched on."""
    import numpy as np

    from nmt.config import config_from_dict
    from nmt.data.batching import make_batches
    from nmt.data.prepare import prepare

    root = s.cache / "data"
    plain = root / "plain"
    plain.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        for lang in (SRC, TGT):
            _decompress(s.data_dir / "multi30k" / f"{split}.{lang}.gz", plain / f"{split}.{lang}")
    valid_prefix, test_prefix = plain / "valid", plain / "test2016"
    if s.dev_sentences:
        valid_prefix = plain / f"valid_first{s.dev_sentences}"
    if s.decode_sentences:
        test_prefix = plain / f"test2016_first{s.decode_sentences}"
    for prefix, split, n in ((valid_prefix, "valid", s.dev_sentences), (test_prefix, "test2016", s.decode_sentences)):
        for lang in (SRC, TGT):
            _decompress(s.data_dir / "multi30k" / f"{split}.{lang}.gz", Path(f"{prefix}.{lang}"), n)

    prep_exp = root / "nmt"
    cfg = config_from_dict(nmt_config(s, prep_exp, None, "fp32"))
    _write_yaml(nmt_config(s, prep_exp, None, "fp32"), prep_exp / "bench.yaml")
    log.info("preparing the data with nmt's prepare (SentencePiece %d, joint) in %s", s.dims.vocab, prep_exp)
    prepared = prepare(cfg)  # what `nmt prepare` runs; a second run reuses the model and the arrays
    spm_model = prep_exp / "spm" / "joint.model"

    # Joey's vocabulary file: one piece per line in id order. Joey puts its four specials first (unk, pad, bos,
    # eos), skipping them where they recur, so the pieces keep their names and the size stays the same.
    sp = prepared.tgt_model
    pieces = [sp.sp.id_to_piece(i) for i in range(len(sp))]
    for piece in pieces:
        if len(piece.splitlines()) != 1:  # Joey reads the file with str.splitlines()
            raise SystemExit(f"bench: SentencePiece piece {piece!r} would break Joey's vocabulary file")
    joey_vocab = root / "joey_vocab.txt"
    joey_vocab.write_text("".join(p + "\n" for p in pieces), encoding="utf-8")

    # Joey's training pairs: its max_length (100) filter on subword lengths, nothing else.
    def lengths(path: Path) -> list[int]:
        lines = path.read_text(encoding="utf-8").split("\n")[:-1]
        return [len(ids) for ids in sp.encode(lines)]

    raw_src, raw_tgt = lengths(plain / f"train.{SRC}"), lengths(plain / f"train.{TGT}")
    keep = [i for i, (a, b) in enumerate(zip(raw_src, raw_tgt)) if 0 < a <= 100 and 0 < b <= 100]
    src_len, tgt_len = prepared.train.src_lengths + 1, prepared.train.tgt_lengths + 1
    batches = make_batches(src_len, tgt_len, s.max_tokens, seed=s.seed, epoch=0)
    return Data(plain=plain, prep_exp=prep_exp, spm_model=spm_model, joey_vocab=joey_vocab,
                valid_prefix=valid_prefix, test_prefix=test_prefix, vocab_size=len(sp),
                src_lengths=src_len.tolist(), tgt_lengths=tgt_len.tolist(),
                joey_src_lengths=[raw_src[i] + 1 for i in keep], joey_tgt_lengths=[raw_tgt[i] + 1 for i in keep],
                ours_batch_tokens=[int(np.sum(tgt_len[b])) for b in batches])


def joey_batches(src_lengths: list[int], tgt_lengths: list[int], batch_size: int, seed: int) -> list[int]:
    """Real target tokens of each batch of Joey's `TokenBatchSampler` over one shuffled epoch.

    Joey counts `max(src + 1, trg + 1)` per sentence with padding (lengths here already count the +1), closes
    a batch once `longest * n >= batch_size`, and does not bucket by length.
    """
    import numpy as np

    order = np.random.default_rng(seed).permutation(len(src_lengths))
    out, longest, n, real = [], 0, 0, 0
    for i in order:
        longest = max(longest, src_lengths[i], tgt_lengths[i])
        n += 1
        real += tgt_lengths[i]
        if longest * n >= batch_size:
            out.append(real)
            longest, n, real = 0, 0, 0
    if n:
        out.append(real)
    return out


def match_joey_batch_size(data: Data, seed: int) -> int:
    """The smallest Joey token `batch_size` whose mean real target tokens per update reaches ours."""
    target = sum(data.ours_batch_tokens) / len(data.ours_batch_tokens)

    def mean_real(size: int) -> float:
        counts = joey_batches(data.joey_src_lengths, data.joey_tgt_lengths, size, seed)
        return sum(counts) / len(counts)

    low, high = 64, 64
    while mean_real(high) < target:
        low, high = high, high * 2
    while high - low > 16:
        mid = (low + high) // 2
        low, high = (mid, high) if mean_real(mid) < target else (low, mid)
    return high


# ----------------------------------------------------------------------------------------------- the peer


def ensure_peer(s: Settings) -> Path:
    """Joey NMT 2.3.0 in a virtual environment of its own in the cache; installed once, then reused."""
    venv = s.cache / "joey-venv"
    python = venv / "bin" / "python"
    marker = venv / ".bench-ready"
    wanted = json.dumps(PEER_PACKAGES)
    freeze = s.cache / "joey-freeze.txt"  # the exact peer stack, for the record
    if marker.exists() and marker.read_text() == wanted and python.exists():
        if not freeze.exists():
            freeze.write_text(subprocess.run([str(python), "-m", "pip", "freeze"], capture_output=True,
                                             text=True).stdout)
        return python
    install_log = s.cache / "joey-install.log"
    log.info("installing %s into %s (once; a few minutes; log in %s)", PEER, venv, install_log)
    with open(install_log, "a", encoding="utf-8") as out:
        def step(*command: str) -> None:
            out.write(f"$ {' '.join(command)}\n")
            out.flush()
            if subprocess.run(list(command), stdout=out, stderr=subprocess.STDOUT).returncode != 0:
                raise SystemExit(f"bench: `{' '.join(command)}` failed; see {install_log}")

        if not python.exists():
            step(shutil.which("python3") or sys.executable, "-m", "venv", str(venv))
        for packages in PEER_PACKAGES:
            step(str(python), "-m", "pip", "install", *packages)
        step(str(python), "-c", "import torch, joeynmt.training, joeynmt.prediction; "
             "assert torch.__version__.startswith('2.13.0'), torch.__version__")
        freeze.write_text(subprocess.run([str(python), "-m", "pip", "freeze"], capture_output=True,
                                         text=True).stdout)
    marker.write_text(wanted)
    return python


def joey_config(s: Settings, data: Data, model_dir: Path, batch_size: int, updates: int, valid_every: int,
                test_prefix: Path | None = None) -> dict:
    """Joey NMT's config for the bench model: the same data, SentencePiece model and architecture as ours."""
    d = s.dims
    side = lambda lang: {  # noqa: E731
        "lang": lang, "level": "bpe", "lowercase": False, "max_length": 100, "voc_file": str(data.joey_vocab),
        "tokenizer_type": "sentencepiece", "tokenizer_cfg": {"model_file": str(data.spm_model)}}
    return {
        "name": model_dir.name,
        "joeynmt_version": "2.3.0",
        "model_dir": str(model_dir),
        "use_cuda": s.device.startswith("cuda"),
        "fp16": False,
        "random_seed": s.seed,
        "data": {
            "train": str(data.plain / "train"), "dev": str(data.valid_prefix),
            "test": str(test_prefix or data.test_prefix), "dataset_type": "plain",
            "src": side(SRC), "trg": side(TGT),
        },
        "testing": {
            "n_best": 1, "beam_size": s.beam, "beam_alpha": s.beam_alpha, "batch_size": s.decode_batch_tokens,
            "batch_type": "token", "max_output_length": -1, "eval_metrics": ["bleu"],
            "sacrebleu_cfg": {"tokenize": "13a"},
        },
        "training": {
            "optimizer": "adam", "adam_betas": [0.9, 0.999], "learning_rate": s.lr, "learning_rate_min": 1e-8,
            # Joey 2.3.0 insists on a scheduler: an exponential decay by 1.0 per epoch is a constant rate.
            "scheduling": "exponential", "decrease_factor": 1.0,
            "clip_grad_norm": s.clip_norm, "label_smoothing": s.label_smoothing, "loss": "crossentropy",
            "normalization": "tokens", "batch_size": batch_size, "batch_type": "token", "batch_multiplier": 1,
            "epochs": 1000, "updates": updates, "validation_freq": valid_every,
            "logging_freq": math.gcd(valid_every, 10), "early_stopping_metric": "bleu", "keep_best_ckpts": 1,
            "shuffle": True, "overwrite": True, "print_valid_sents": [0],
        },
        "model": {
            "initializer": "xavier_uniform", "bias_initializer": "zeros", "init_gain": 1.0,
            "embed_initializer": "xavier_uniform", "embed_init_gain": 1.0,
            "tied_embeddings": False, "tied_softmax": False,
            "encoder": {"type": "recurrent", "rnn_type": "lstm", "hidden_size": d.enc_hidden, "bidirectional": True,
                        "num_layers": 1, "dropout": d.dropout,
                        "embeddings": {"embedding_dim": d.emb, "scale": True, "dropout": d.dropout}},
            "decoder": {"type": "recurrent", "rnn_type": "gru", "hidden_size": d.dec_hidden, "num_layers": 1,
                        "attention": "bahdanau", "input_feeding": True, "init_hidden": "bridge",
                        "dropout": d.dropout, "hidden_dropout": d.dropout,
                        "embeddings": {"embedding_dim": d.emb, "scale": True, "dropout": d.dropout}},
        },
    }


# ----------------------------------------------------------------------------------------------- workers
# Each runs in a process of its own: ours under this Python, the peer's under its venv's.


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _gpu_peak_mb(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None


def worker_peak(spec: dict) -> dict:
    """Matrix-product rates (GFLOP/s) in fp32 and bf16, plain tensors, per shape (m, k, n)."""
    import torch

    _set_threads(spec["threads"])
    device = torch.device(spec["device"])
    results = []
    for dtype_name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        fp32_best = max((r["gflops"] for r in results if r["dtype"] == "fp32"), default=0.0)
        for m, k, n in spec["shapes"]:  # smallest first
            a = torch.randn(m, k, device=device).to(dtype)
            b = torch.randn(k, n, device=device).to(dtype)
            torch.mm(a, b)  # one untimed product: kernel selection, caches
            _sync(spec["device"])
            iterations, started = 0, time.perf_counter()
            while True:
                torch.mm(a, b)
                _sync(spec["device"])
                iterations += 1
                elapsed = time.perf_counter() - started
                if elapsed >= spec["seconds"]:
                    break
            gflops = 2.0 * m * k * n * iterations / elapsed / 1e9
            results.append({"dtype": dtype_name, "shape": [m, k, n], "gflops": gflops})
            if dtype_name == "bf16" and gflops < fp32_best / 4:
                # A CPU without native bf16 emulates it: the larger shapes would take minutes to say the same.
                results[-1]["note"] = "bf16 emulated (much slower than fp32); larger shapes skipped"
                break
    return {"products": results}


def worker_ours_train_speed(spec: dict) -> dict:
    """Our training loop's updates (`Trainer.train_update`: collate, forward, backward, clip, step), timed."""
    import torch

    from nmt.config import load_config
    from nmt.data.batching import make_batches
    from nmt.data.prepare import prepare
    from nmt.precision import dtype_name, resolve_device
    from nmt.train import Dist, Trainer, seed_everything

    _set_threads(spec["threads"])
    cfg = load_config(spec["config"])
    device = resolve_device(cfg.train.device)
    data = prepare(cfg)
    seed_everything(cfg.train.seed)
    trainer = Trainer(cfg, data, device, Dist())
    src_len, tgt_len = data.train.src_lengths + 1, data.train.tgt_lengths + 1
    batches: list = []
    epoch = 0
    while len(batches) < spec["warmup"] + spec["updates"]:
        batches += make_batches(src_len, tgt_len, cfg.train.max_tokens, seed=cfg.train.seed, epoch=epoch)
        epoch += 1
    for batch in batches[: spec["warmup"]]:
        trainer.train_update([batch])
    _sync(spec["device"])
    tokens = []
    started = time.perf_counter()
    for batch in batches[spec["warmup"]: spec["warmup"] + spec["updates"]]:
        tokens.append(trainer.train_update([batch])[2])  # .item() inside: synchronised
    seconds = time.perf_counter() - started
    return {"dtype": dtype_name(trainer.dtype), "tokens": tokens, "seconds": seconds,
            "tok_s": sum(tokens) / seconds, "peak_rss_mb": peak_rss_mb(), "gpu_peak_mb": _gpu_peak_mb(spec["device"]),
            "threads": torch.get_num_threads()}


def worker_ours_model(spec: dict) -> dict:
    """Train our decoding model with `nmt.train.train` (resumable), stopping at the dev BLEU target if any."""
    import nmt.train
    from nmt.config import load_config

    _set_threads(spec["threads"])
    cfg = load_config(spec["config"])
    target = spec["target_bleu"]
    if target is not None:
        class UntilTarget(nmt.train.Trainer):
            """Stops at the first validation whose dev BLEU reaches the target: nmt has no such option."""

            def after_validation(self, record: dict) -> bool:
                stop = super().after_validation(record)
                return stop or record.get("bleu", float("-inf")) >= target

        nmt.train.Trainer = UntilTarget  # train() builds its trainer by this name
    code = nmt.train.train(cfg, resume=True, run_tests=False)
    if code != 0:
        raise SystemExit(code)
    exp = Path(cfg.exp_dir)
    valid = [json.loads(line) for line in (exp / "metrics.jsonl").read_text().splitlines()
             if json.loads(line).get("kind") == "valid"]
    # final.pt is the best validation's checkpoint (keep_best 1): its BLEU is the decoding model's
    return {"checkpoint": str(exp / "final.pt"), "updates": valid[-1]["update"], "epochs": valid[-1]["epoch"],
            "dev_bleu": max(v["bleu"] for v in valid), "dev_bleu_last": valid[-1]["bleu"],
            "dev_bleu_by_update": {str(v["update"]): v["bleu"] for v in valid},
            "train_minutes": valid[-1]["train_minutes"]}


def worker_ours_decode(spec: dict) -> dict:
    """Translate the test sentences greedy and with beam 5 (`nmt.translate.translate_sentences`), timed, counting
    the hypothesis tokens the search computes (for the FLOP count)."""
    import dataclasses as dc

    import torch

    import nmt.search
    from nmt.checkpoint import load_translator
    from nmt.precision import dtype_name, resolve_device, resolve_dtype
    from nmt.translate import translate_sentences

    _set_threads(spec["threads"])
    device = resolve_device(spec["device"])
    dtype = resolve_dtype(spec["dtype"], device)
    translator = load_translator(spec["checkpoint"])
    translator.model.to(device)
    sentences = Path(spec["source"]).read_text(encoding="utf-8").split("\n")[:-1]
    counts = {"hyp_tokens": 0, "hyp_src_positions": 0}
    step = nmt.search.Ensemble.step

    def counted_step(self: Any, prev: torch.Tensor) -> Any:
        counts["hyp_tokens"] += prev.numel()
        counts["hyp_src_positions"] += int(self.encs[0].mask.sum())
        return step(self, prev)

    nmt.search.Ensemble.step = counted_step
    src_tokens = sum(len(ids) + 1 for ids in translator.src_model.encode(sentences) if ids)
    results = {}
    for beam in spec["beams"]:
        decode = dc.replace(translator.config.decode, beam=beam, alpha=spec["alpha"], length_penalty="gnmt",
                            batch_tokens=spec["batch_tokens"], nbest=1)
        translate = lambda batch: translate_sentences(  # noqa: E731
            [translator.model], translator.src_model, translator.tgt_model, batch, decode, device, dtype,
            decode.batch_tokens)
        translate(sentences[:20])  # warm-up: kernel selection and caches, untimed
        counts.update(hyp_tokens=0, hyp_src_positions=0)
        _sync(spec["device"])
        started = time.perf_counter()
        hyps = translate(sentences)
        _sync(spec["device"])
        seconds = time.perf_counter() - started
        results[str(beam)] = {"seconds": seconds, "hyps": [h[0].text for h in hyps], **counts}
    return {"dtype": dtype_name(dtype), "sentences": len(sentences), "src_tokens": src_tokens, "beams": results,
            "peak_rss_mb": peak_rss_mb(), "gpu_peak_mb": _gpu_peak_mb(spec["device"])}


def _joey_run_training(spec: dict, on_validate: Any = None) -> tuple[dict, list]:
    """Joey NMT's own training entry point (what `python -m joeynmt train` runs), with every update's start time
    and real target tokens recorded, and `on_validate(manager)` called after each validation."""
    from joeynmt.config import load_config
    from joeynmt.helpers import make_model_dir
    from joeynmt.helpers_for_ddp import get_logger
    from joeynmt.training import TrainManager, train

    _set_threads(spec["threads"])
    cfg = load_config(Path(spec["config"]))
    model_dir = Path(cfg["model_dir"])
    make_model_dir(model_dir, overwrite=True)
    shutil.copy2(spec["config"], model_dir / "config.yaml")
    get_logger("", log_file=str(model_dir / "train.log"))
    steps: list[tuple[float, int]] = []
    train_step, validate = TrainManager._train_step, TrainManager._validate

    def timed_step(self: Any, batch: Any) -> Any:
        steps.append((time.perf_counter(), int(batch.ntokens)))
        return train_step(self, batch)

    def checked_validate(self: Any, valid_data: Any) -> None:
        validate(self, valid_data)
        if on_validate is not None:
            on_validate(self)

    TrainManager._train_step, TrainManager._validate = timed_step, checked_validate
    started = time.time()
    train(rank=0, world_size=None, cfg=cfg, skip_test=True)
    return {"wall_seconds": time.time() - started, "model_dir": str(model_dir)}, steps


def worker_joey_train_speed(spec: dict) -> dict:
    """Joey's training loop over warmup + updates + 1 updates; the rate is taken between update starts, so each
    timed update includes its data loading, forward, backward, clipping, optimiser and scheduler steps."""
    import torch

    _, steps = _joey_run_training(spec)
    warmup, updates = spec["warmup"], spec["updates"]
    if len(steps) < warmup + updates + 1:
        raise SystemExit(f"Joey NMT ran {len(steps)} updates, expected {warmup + updates + 1}")
    tokens = [n for _, n in steps[warmup: warmup + updates]]
    seconds = steps[warmup + updates][0] - steps[warmup][0]
    return {"dtype": "fp32", "tokens": tokens, "seconds": seconds, "tok_s": sum(tokens) / seconds,
            "peak_rss_mb": peak_rss_mb(), "gpu_peak_mb": _gpu_peak_mb(spec["device"]),
            "threads": torch.get_num_threads()}


def worker_joey_model(spec: dict) -> dict:
    """Train Joey's decoding model, stopping at the first validation whose dev BLEU reaches the target."""
    target = spec["target_bleu"]
    history: list[tuple[int, float]] = []

    def on_validate(manager: Any) -> None:
        # Joey keeps only the best score; the log has each one. Its stats know the best so far.
        history.append((manager.stats.steps, float(manager.stats.best_ckpt_score)))
        if target is not None and manager.stats.best_ckpt_score >= target:
            manager.stats.is_max_update = True  # Joey's own way out of its loop

    info, steps = _joey_run_training(spec, on_validate)
    best = Path(info["model_dir"]) / "best.ckpt"
    if not best.exists():
        raise SystemExit(f"Joey NMT wrote no {best}")
    best_bleu = history[-1][1] if history else None
    # Joey's best checkpoint is its best validation: the dev BLEU of the model that decodes.
    return {"checkpoint": str(best.resolve()), "updates": len(steps), "dev_bleu": best_bleu,
            "best_dev_bleu": best_bleu, "dev_bleu_by_update": {str(u): b for u, b in history}, **info}


def worker_joey_decode(spec: dict) -> dict:
    """Joey's `predict` (its test-time batching, search and post-processing) on the test sentences, greedy and
    beam 5, timed; a 20-sentence run first warms each search up, untimed."""
    import torch
    from joeynmt.config import load_config, parse_global_args
    from joeynmt.data import load_data
    from joeynmt.prediction import predict, prepare

    _set_threads(spec["threads"])
    cfg = load_config(Path(spec["config"]))
    cfg["data"]["test"] = spec["test_prefix"]  # the model's config names the test set of the run that trained it
    cfg["testing"]["load_model"] = spec["checkpoint"]
    args = parse_global_args(cfg, rank=0, mode="test")
    model, _, _, test_data = prepare(args, rank=0, mode="test")
    warm_cfg = load_config(Path(spec["config"]))
    warm_cfg["data"]["test"] = spec["warmup_prefix"]
    warm_cfg["data"]["special_symbols"] = cfg["data"]["special_symbols"]
    *_, warm_data = load_data(warm_cfg["data"], datasets=["test"])
    results = {}
    for beam in spec["beams"]:
        test_args = args.test._replace(beam_size=beam, eval_metrics=[], n_best=1, return_prob="none",
                                       return_attention=False)
        run = lambda data: predict(model=model, data=data, device=args.device, n_gpu=args.n_gpu,  # noqa: E731
                                   rank=0, compute_loss=False, normalization=args.train.normalization,
                                   num_workers=0, args=test_args, autocast=args.autocast)
        run(warm_data)
        _sync(spec["device"])
        started = time.perf_counter()
        _, _, hyps, *_ = run(test_data)
        _sync(spec["device"])
        results[str(beam)] = {"seconds": time.perf_counter() - started, "hyps": list(hyps)}
    return {"dtype": "fp32", "sentences": len(test_data), "beams": results, "peak_rss_mb": peak_rss_mb(),
            "gpu_peak_mb": _gpu_peak_mb(spec["device"]), "threads": torch.get_num_threads()}


WORKERS = {
    "peak": worker_peak,
    "ours_train_speed": worker_ours_train_speed,
    "ours_model": worker_ours_model,
    "ours_decode": worker_ours_decode,
    "joey_train_speed": worker_joey_train_speed,
    "joey_model": worker_joey_model,
    "joey_decode": worker_joey_decode,
}


def worker_main(argv: list[str]) -> int:
    kind, spec_path, out_path = argv
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s",
                        datefmt="%H:%M:%S")
    result = WORKERS[kind](json.loads(Path(spec_path).read_text()))
    tmp = Path(out_path + ".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(out_path)
    return 0


# ----------------------------------------------------------------------------------------------- the bench


def _copy_prepared(data: Data, exp: Path) -> None:
    """Give a new experiment folder the prepared SentencePiece model and arrays, so nmt reuses them (its cache
    keys are content hashes) instead of training another SentencePiece model."""
    for name in ("spm", "cache"):
        if not (exp / name).exists():
            shutil.copytree(data.prep_exp / name, exp / name)


def train_models(s: Settings, data: Data, dtypes: list[str], peer_python: Path | None,
                 peer_batch_size: int) -> dict:
    """The decoding models, trained once and cached: ours in fp32 to the dev BLEU target (or --model-updates),
    ours in each other dtype for as many updates as fp32 took, the peer to the same target."""
    fixed = s.model_updates or None
    valid_every = fixed or s.valid_every
    cap = fixed or s.valid_every * math.ceil(s.max_model_updates / s.valid_every)
    rule = {"target_bleu": None if fixed else s.target_bleu, "updates": cap, "valid_every": valid_every,
            "dev_sentences": s.dev_sentences, "spm": hashlib.sha256(data.spm_model.read_bytes()).hexdigest()}
    models: dict[str, dict] = {}
    for dtype in dtypes:
        updates = cap if dtype == "fp32" else models["fp32"]["updates"]
        target = rule["target_bleu"] if dtype == "fp32" else None
        train = {"max_updates": updates, "max_epochs": 10_000, "valid_every": valid_every}
        recipe = nmt_config(s, Path("."), data, dtype, **train)
        for where in ("device", "threads"):  # a model trained on one device decodes on another
            del recipe["train"][where]
        identity = {"system": "nmt", "dtype": dtype, "config": recipe, **rule, "updates": updates,
                    "target_bleu": target}
        exp = s.cache / "models" / f"nmt-{dtype}-{_stable_hash(identity)}"
        done = exp / "bench-done.json"
        if not done.exists():
            log.info("training our %s model into %s (%s)", dtype, exp,
                     f"until dev BLEU >= {target}, at most {updates} updates" if target is not None
                     else f"{updates} updates")
            exp.mkdir(parents=True, exist_ok=True)
            _copy_prepared(data, exp)
            config = _write_yaml(nmt_config(s, exp, data, dtype, **train), exp / "bench.yaml")
            result = run_worker(sys.executable, "ours_model", {"config": str(config), "target_bleu": target,
                                                               "threads": s.threads}, exp, s.threads)
            done.write_text(json.dumps(result, indent=1))
            shutil.rmtree(exp / "checkpoints")  # final.pt decodes; the training states are 300 MB
        else:
            log.info("reusing our %s model in %s", dtype, exp)
        models[dtype] = json.loads(done.read_text())
    if peer_python is not None:
        # What is decoded later does not change the model: the identity names the whole test set, so that
        # --quick (500 test sentences) reuses the full run's model.
        recipe = joey_config(s, data, Path("."), peer_batch_size, cap, valid_every, data.plain / "test2016")
        del recipe["use_cuda"]
        identity = {"system": "joey", **rule, "config": recipe}
        model_dir = s.cache / "models" / f"joey-{_stable_hash(identity)}"
        done = model_dir.with_name(model_dir.name + ".bench-done.json")  # Joey's model_dir is wiped on start
        if not done.exists():
            log.info("training %s's model into %s", PEER, model_dir)
            config = _write_yaml(joey_config(s, data, model_dir, peer_batch_size, cap, valid_every),
                                 model_dir.with_name(model_dir.name + ".yaml"))
            result = run_worker(peer_python, "joey_model", {"config": str(config), "threads": s.threads,
                                                            "device": s.device,
                                                            "target_bleu": rule["target_bleu"]},
                                s.cache / "runs", s.threads)
            result["config"] = str(config)
            done.write_text(json.dumps(result, indent=1))
        else:
            log.info("reusing %s's model in %s", PEER, model_dir)
        models["peer"] = json.loads(done.read_text())
    return models


def _bleu(hyps: list[str], refs: list[str]) -> tuple[float, str]:
    from sacrebleu.metrics import BLEU

    metric = BLEU()
    return float(metric.corpus_score(hyps, [refs]).score), str(metric.get_signature())


def _mean(values: list[float]) -> float:
    return sum(values) / max(len(values), 1)


def _mean_words(lines: list[str]) -> float:
    return _mean([len(line.split()) for line in lines])


def _ratio(ours: float | None, peer: float | None) -> float | None:
    return None if ours is None or not peer else ours / peer


def _dev_bleu(model: dict) -> float | None:
    """The dev BLEU of the model that decodes (the peer's best validation is its best checkpoint)."""
    return model.get("dev_bleu", model.get("best_dev_bleu"))


def _who(name: str) -> str:
    return PEER if name == "peer" else f"nmt {name}"


@dataclass
class Peak:
    rates: dict[str, float]  # GFLOP/s per dtype: the best over the shapes

    @property
    def dtype(self) -> str:
        return max(self.rates, key=self.rates.get)

    @property
    def best(self) -> float:
        return self.rates[self.dtype]


def measure_peak(s: Settings, machine: Machine) -> Peak:
    """Matrix products of the model's typical shapes: a decoder step's GRU input projection (batch 128), the
    vocabulary projection of a decoding batch (1024 rows) and of a training batch (4096 target tokens); then a
    large square product, what the machine does at its best. The fractions of peak divide by the best of all."""
    d = s.dims
    shapes = [[128, d.emb + d.dec_hidden, d.dec_gates * d.dec_hidden], [1024, d.dec_hidden, d.vocab],
              [4096, d.dec_hidden, d.vocab], [2048, 2048, 2048]]
    result = run_worker(sys.executable, "peak", {"device": s.device, "threads": s.threads, "shapes": shapes,
                                                 "seconds": s.peak_seconds}, s.cache / "runs", s.threads)
    rates = {"fp32": 0.0, "bf16": 0.0}
    print("matrix products, GFLOP/s (2 per multiply-add):")
    for r in result["products"]:
        m, k, n = r["shape"]
        rates[r["dtype"]] = max(rates[r["dtype"]], r["gflops"])
        note = f"  ({r['note']})" if "note" in r else ""
        print(f"  ({m}x{k})@({k}x{n}) {r['dtype']}: {r['gflops']:8.1f}{note}  {machine.tag(r['dtype'])}")
    peak = Peak(rates)
    print(f"  best: {peak.best:.1f} GFLOP/s ({peak.dtype})  {machine.tag(peak.dtype)}")
    return peak


def measure_training(s: Settings, machine: Machine, data: Data, dtypes: list[str], peer_python: Path | None,
                     peer_batch_size: int, train_flops: float) -> dict[str, dict]:
    """Training speed of ours in each dtype and of the peer, each in a process of its own."""
    speed: dict[str, dict] = {}
    spec = {"warmup": s.warmup_updates, "updates": s.updates, "threads": s.threads, "device": s.device}
    for dtype in dtypes:
        config = _write_yaml(nmt_config(s, data.prep_exp, data, dtype), s.cache / "runs" / f"speed-{dtype}.yaml")
        speed[dtype] = run_worker(sys.executable, "ours_train_speed", {"config": str(config), **spec},
                                  s.cache / "runs" / f"speed-{dtype}", s.threads)
    if peer_python is not None:
        joey = joey_config(s, data, s.cache / "runs" / "joey-speed", peer_batch_size,
                           s.warmup_updates + s.updates + 1, valid_every=10**9)  # never validates
        config = _write_yaml(joey, s.cache / "runs" / "joey-speed.yaml")
        speed["peer"] = run_worker(peer_python, "joey_train_speed", {"config": str(config), **spec},
                                   s.cache / "runs", s.threads)
    print(f"training: target tokens/s over {s.updates} updates after {s.warmup_updates} warm-up (epoch: ours "
          f"{sum(data.tgt_lengths):,} target tokens, Joey {sum(data.joey_tgt_lengths):,}):")
    for name, r in speed.items():
        r["per_update"] = _mean(r["tokens"])
        r["epoch_seconds"] = sum(data.joey_tgt_lengths if name == "peer" else data.tgt_lengths) / r["tok_s"]
        gflops = "" if name == "peer" else f", {r['tok_s'] * train_flops / 1e9:.1f} GFLOP/s"
        gpu = f", GPU peak {r['gpu_peak_mb']:,.0f} MB" if r.get("gpu_peak_mb") else ""
        print(f"  {_who(name):16s} {r['tok_s']:9,.0f} tok/s; {r['per_update']:,.0f} real target tokens/update; "
              f"{r['epoch_seconds']:,.0f} s/epoch; peak RSS {r['peak_rss_mb']:,.0f} MB{gpu}{gflops}  "
              f"{machine.tag(r['dtype'])}")
    return speed


def report_models(s: Settings, machine: Machine, data: Data, models: dict[str, dict], auto: str) -> bool:
    """Print each decoding model's dev BLEU; True when `auto`'s (bf16) stays within 0.3 of fp32's."""
    print(f"decoding models (dev BLEU, greedy, {data.valid_prefix.name}):")
    for name, m in models.items():
        bleu = _dev_bleu(m)
        bleu = float("nan") if bleu is None else bleu
        reached = "" if s.model_updates else ("  (target reached)" if bleu >= s.target_bleu
                                              else f"  (BELOW the target {s.target_bleu})")
        curve = ", ".join(f"{u}: {b:.2f}" for u, b in m["dev_bleu_by_update"].items())
        print(f"  {_who(name):16s} dev BLEU {bleu:5.2f} after {m['updates']} updates{reached}; by update "
              f"{'(best so far) ' if name == 'peer' else ''}{curve}  {machine.tag('fp32' if name == 'peer' else name)}")
    if auto == "fp32":
        return False
    # the same update for both: the last validation (fp32's best, since it stopped on reaching the target)
    dev_fp32, dev_auto = (models[k].get("dev_bleu_last", models[k]["dev_bleu"]) for k in ("fp32", auto))
    counts = abs(dev_auto - dev_fp32) <= 0.3
    print(f"  {auto} {'counts' if counts else 'does NOT count'}: dev BLEU {dev_auto:.2f} against fp32's "
          f"{dev_fp32:.2f} after the same {models['fp32']['updates']} updates (allowed: within 0.3)")
    return counts


def measure_decoding(s: Settings, machine: Machine, data: Data, dims: ModelDims, dtypes: list[str],
                     models: dict[str, dict], peer_python: Path | None) -> tuple[dict[str, dict], list[str], str]:
    """Greedy and beam-5 decoding of the test sentences: figures keyed 'system/beam', the references and the
    BLEU signature."""
    refs = Path(f"{data.test_prefix}.{TGT}").read_text(encoding="utf-8").split("\n")[:-1]
    warm_prefix = data.plain / "test2016_first20"
    for lang in (SRC, TGT):
        _decompress(s.data_dir / "multi30k" / f"test2016.{lang}.gz", Path(f"{warm_prefix}.{lang}"), 20)
    beams = [1, s.beam]
    spec = {"beams": beams, "threads": s.threads, "device": s.device}
    runs: dict[str, dict] = {}
    for dtype in dtypes:
        runs[dtype] = run_worker(sys.executable, "ours_decode",
                                 {"checkpoint": models[dtype]["checkpoint"], "dtype": dtype,
                                  "source": f"{data.test_prefix}.{SRC}", "alpha": s.beam_alpha,
                                  "batch_tokens": s.decode_batch_tokens, **spec},
                                 s.cache / "runs" / f"decode-{dtype}", s.threads)
    if peer_python is not None:
        runs["peer"] = run_worker(peer_python, "joey_decode",
                                  {"config": models["peer"]["config"], "checkpoint": models["peer"]["checkpoint"],
                                   "warmup_prefix": str(warm_prefix), "test_prefix": str(data.test_prefix), **spec},
                                  s.cache / "runs", s.threads)
    print(f"decoding {data.test_prefix.name} ({len(refs)} sentences; reference mean length "
          f"{_mean_words(refs):.1f} words; batches of {s.decode_batch_tokens} tokens):")
    figures: dict[str, dict] = {}
    signature = ""
    for name, r in runs.items():
        for beam in beams:
            b = r["beams"][str(beam)]
            bleu, signature = _bleu(b["hyps"], refs)
            f = {"sent_s": len(refs) / b["seconds"], "bleu": bleu, "len": _mean_words(b["hyps"]),
                 "peak_rss_mb": r["peak_rss_mb"]}
            extra = ""
            if name != "peer":
                flops = search_flops(dims, r["sentences"], r["src_tokens"], b["hyp_tokens"], b["hyp_src_positions"])
                f.update(gflops=flops / b["seconds"] / 1e9, flops_per_hyp_token=flops / max(b["hyp_tokens"], 1))
                extra = f"; {f['gflops']:.1f} GFLOP/s over {b['hyp_tokens']:,} hypothesis tokens"
            figures[f"{name}/{beam}"] = f
            print(f"  {_who(name):16s} {'greedy' if beam == 1 else f'beam {beam}':7s} {f['sent_s']:8.1f} sent/s; "
                  f"BLEU {bleu:5.2f}; mean length {f['len']:.1f} words{extra}  {machine.tag(r['dtype'])}")
    print(f"  BLEU signature: {signature}")
    return figures, refs, signature


def bench(s: Settings) -> dict:
    """The whole benchmark; prints the figures as it goes and returns the summary (the JSON line)."""
    import torch

    from nmt.precision import dtype_name, resolve_device, resolve_dtype

    started = time.time()
    machine = Machine.here(s.threads, s.device)
    auto = dtype_name(resolve_dtype("auto", resolve_device(s.device)))
    dtypes = ["fp32"] if auto == "fp32" else ["fp32", auto]
    s.cache.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine.describe()}; torch {torch.__version__}; dtype auto = {auto}", flush=True)
    if s.model_updates:
        print(f"note: --model-updates {s.model_updates}: the decoding models are trained for {s.model_updates} "
              "updates only, not to a dev BLEU target; their decoding speeds are not those of translating models",
              flush=True)

    peak = measure_peak(s, machine)
    data = prepare_data(s)
    dims = dataclasses.replace(s.dims, vocab=data.vocab_size)
    peer_python = None if s.skip_peer else ensure_peer(s)
    peer_batch_size = match_joey_batch_size(data, s.seed)
    joey_4096 = joey_batches(data.joey_src_lengths, data.joey_tgt_lengths, 4096, s.seed)
    print(f"batches: ours max_tokens {s.max_tokens} holds {_mean(data.ours_batch_tokens):,.0f} real target tokens "
          f"per update on average; Joey's batch_size 4096 would hold {_mean(joey_4096):,.0f}, so it gets "
          f"batch_size {peer_batch_size} (both counted over a whole epoch's batches)")
    train_flops = train_flops_per_target_token(dims, data.src_lengths, data.tgt_lengths)
    speed = measure_training(s, machine, data, dtypes, peer_python, peer_batch_size, train_flops)
    models = train_models(s, data, dtypes, peer_python, peer_batch_size)
    bf16_counts = report_models(s, machine, data, models, auto)
    decoding, refs, signature = measure_decoding(s, machine, data, dims, dtypes, models, peer_python)
    summary = summarize(s, machine, peak, speed, models, decoding, refs, auto, bf16_counts, train_flops,
                        peer_batch_size if peer_python is not None else None, time.time() - started)
    summary["bleu_signature"] = signature
    return summary


def summarize(s: Settings, machine: Machine, peak: Peak, speed: dict, models: dict, decoding: dict, refs: list[str],
              auto: str, bf16_counts: bool, train_flops: float, peer_batch_size: int | None,
              seconds: float) -> dict:
    """The JSON summary (the issue's keys first) and the closing lines. The headline dtype is auto's where bf16
    kept dev BLEU, fp32 otherwise; fp32 figures are always there too."""
    import torch

    headline = auto if bf16_counts else "fp32"

    def dec(name: str, beam: int, key: str) -> float | None:
        return decoding.get(f"{name}/{beam}", {}).get(key)

    def tok_s(name: str) -> float | None:
        return speed[name]["tok_s"] if name in speed else None

    def of_peak(gflops: float | None) -> float | None:
        return None if gflops is None else gflops / peak.best

    b = s.beam
    train_gflops = tok_s(headline) * train_flops / 1e9
    summary = {
        "cpu": machine.cpu, "avx512_bf16": machine.avx512_bf16, "dtype": headline,
        "train_tok_s": tok_s(headline), "peer_train_tok_s": tok_s("peer"),
        "train_ratio": _ratio(tok_s(headline), tok_s("peer")), "train_ratio_fp32": _ratio(tok_s("fp32"), tok_s("peer")),
        "greedy_sent_s": dec(headline, 1, "sent_s"), "peer_greedy_sent_s": dec("peer", 1, "sent_s"),
        "greedy_ratio": _ratio(dec(headline, 1, "sent_s"), dec("peer", 1, "sent_s")),
        "beam5_sent_s": dec(headline, b, "sent_s"), "peer_beam5_sent_s": dec("peer", b, "sent_s"),
        "beam5_ratio": _ratio(dec(headline, b, "sent_s"), dec("peer", b, "sent_s")),
        "train_fraction_of_peak": of_peak(train_gflops),
        "beam5_fraction_of_peak": of_peak(dec(headline, b, "gflops")),
        "peak_rss_mb": speed[headline]["peak_rss_mb"],
        "peer_peak_rss_mb": speed["peer"]["peak_rss_mb"] if "peer" in speed else None,
        # the rest
        "cpu_capability": machine.capability, "device": s.device, "gpu": machine.gpu or None, "threads": s.threads,
        "torch": torch.__version__, "auto_dtype": auto, "bf16_counts": bf16_counts,
        "dev_bleu_fp32": models["fp32"].get("dev_bleu_last", _dev_bleu(models["fp32"])),
        "dev_bleu_auto": models[auto].get("dev_bleu_last", _dev_bleu(models[auto])),
        "peer_dev_bleu": _dev_bleu(models["peer"]) if "peer" in models else None,
        "train_tok_s_fp32": tok_s("fp32"), "train_tok_s_auto": tok_s(auto),
        "tgt_tokens_per_update": speed[headline]["per_update"],
        "peer_tgt_tokens_per_update": speed["peer"]["per_update"] if "peer" in speed else None,
        "peer_batch_size": peer_batch_size,
        "epoch_seconds": speed[headline]["epoch_seconds"], "epoch_seconds_fp32": speed["fp32"]["epoch_seconds"],
        "peer_epoch_seconds": speed["peer"]["epoch_seconds"] if "peer" in speed else None,
        "greedy_sent_s_fp32": dec("fp32", 1, "sent_s"), "beam5_sent_s_fp32": dec("fp32", b, "sent_s"),
        "greedy_ratio_fp32": _ratio(dec("fp32", 1, "sent_s"), dec("peer", 1, "sent_s")),
        "beam5_ratio_fp32": _ratio(dec("fp32", b, "sent_s"), dec("peer", b, "sent_s")),
        "greedy_bleu": dec(headline, 1, "bleu"), "peer_greedy_bleu": dec("peer", 1, "bleu"),
        "beam5_bleu": dec(headline, b, "bleu"), "peer_beam5_bleu": dec("peer", b, "bleu"),
        "greedy_len": dec(headline, 1, "len"), "peer_greedy_len": dec("peer", 1, "len"),
        "beam5_len": dec(headline, b, "len"), "peer_beam5_len": dec("peer", b, "len"), "ref_len": _mean_words(refs),
        "peak_gflops_fp32": peak.rates["fp32"], "peak_gflops_bf16": peak.rates["bf16"], "peak_gflops": peak.best,
        "train_flops_per_tgt_token": train_flops, "train_gflops": train_gflops,
        "train_fraction_of_peak_fp32": of_peak(tok_s("fp32") * train_flops / 1e9),
        "beam5_flops_per_hyp_token": dec(headline, b, "flops_per_hyp_token"),
        "beam5_gflops": dec(headline, b, "gflops"), "greedy_gflops": dec(headline, 1, "gflops"),
        "greedy_fraction_of_peak": of_peak(dec(headline, 1, "gflops")),
        "decode_peak_rss_mb": dec(headline, b, "peak_rss_mb"), "peer_decode_peak_rss_mb": dec("peer", b, "peak_rss_mb"),
        "models": {name: {"updates": m["updates"], "dev_bleu": _dev_bleu(m)} for name, m in models.items()},
        "target_bleu": None if s.model_updates else s.target_bleu, "model_updates": s.model_updates or None,
        "quick": s.quick, "warmup_updates": s.warmup_updates, "timed_updates": s.updates,
        "decode_sentences": len(refs), "decode_batch_tokens": s.decode_batch_tokens, "seconds": round(seconds, 1),
    }
    tag = machine.tag(headline)
    print(f"summary ({headline}{'' if bf16_counts or auto == 'fp32' else f'; {auto} did not keep dev BLEU'}):")
    if summary["train_ratio"] is not None:
        print(f"  against {PEER}: training {summary['train_ratio']:.2f}x ({headline}), "
              f"{summary['train_ratio_fp32']:.2f}x in fp32; greedy {summary['greedy_ratio']:.2f}x, beam {b} "
              f"{summary['beam5_ratio']:.2f}x  {tag}")
    print(f"  fraction of the best matrix-product rate ({peak.best:.0f} GFLOP/s, {peak.dtype}): training "
          f"{summary['train_fraction_of_peak']:.1%} ({train_flops / 1e6:.1f} MFLOP per target token), beam {b} "
          f"{summary['beam5_fraction_of_peak']:.1%} ({summary['beam5_flops_per_hyp_token'] / 1e6:.1f} MFLOP per "
          f"hypothesis token), greedy {summary['greedy_fraction_of_peak']:.1%}  {tag}")
    print(f"  took {seconds:.0f} s")
    return summary


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_worker"]:
        return worker_main(argv[1:])
    settings = parse_args(argv)
    from nmt.errors import NMTError

    try:
        summary = bench(settings)
    except NMTError as err:  # a user's mistake (a device that is not there, a bad path): one line
        print(f"bench: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
