"""What `tools/bench.py` prints: the machine beside every figure, each decoding model's dev BLEU, and the
summary with its JSON object (whose keys earlier results are compared on: keep them)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench_setup import PEER, Data, Settings


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


def bleu(hyps: list[str], refs: list[str]) -> tuple[float, str]:
    from sacrebleu.metrics import BLEU

    metric = BLEU()
    return float(metric.corpus_score(hyps, [refs]).score), str(metric.get_signature())


def mean(values: list[float]) -> float:
    return sum(values) / max(len(values), 1)


def mean_words(lines: list[str]) -> float:
    return mean([len(line.split()) for line in lines])


def ratio(ours: float | None, peer: float | None) -> float | None:
    return None if ours is None or not peer else ours / peer


def dev_bleu(model: dict) -> float | None:
    """The dev BLEU of the model that decodes (the peer's best validation is its best checkpoint)."""
    return model.get("dev_bleu", model.get("best_dev_bleu"))


def who(name: str) -> str:
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


def report_models(s: Settings, machine: Machine, data: Data, models: dict[str, dict], auto: str) -> bool:
    """Print each decoding model's dev BLEU; True when `auto`'s (bf16) stays within 0.3 of fp32's."""
    print(f"decoding models (dev BLEU, greedy, {data.valid_prefix.name}):")
    for name, m in models.items():
        score = dev_bleu(m)
        score = float("nan") if score is None else score
        reached = "" if s.model_updates else ("  (target reached)" if score >= s.target_bleu
                                              else f"  (BELOW the target {s.target_bleu})")
        curve = ", ".join(f"{u}: {b:.2f}" for u, b in m["dev_bleu_by_update"].items())
        print(f"  {who(name):16s} dev BLEU {score:5.2f} after {m['updates']} updates{reached}; by update "
              f"{'(best so far) ' if name == 'peer' else ''}{curve}  {machine.tag('fp32' if name == 'peer' else name)}")
    if auto == "fp32":
        return False
    # the same update for both: the last validation (fp32's best, since it stopped on reaching the target)
    dev_fp32, dev_auto = (models[k].get("dev_bleu_last", models[k]["dev_bleu"]) for k in ("fp32", auto))
    counts = abs(dev_auto - dev_fp32) <= 0.3
    print(f"  {auto} {'counts' if counts else 'does NOT count'}: dev BLEU {dev_auto:.2f} against fp32's "
          f"{dev_fp32:.2f} after the same {models['fp32']['updates']} updates (allowed: within 0.3)")
    return counts


def variant_figures(dec: Callable[[str, int, str], float | None], b: int) -> dict:
    """int8 and the shortlist against fp32, the same fp32 model, the same run: speed-up and BLEU difference."""
    figures = {}
    for name, key in (("int8", "int8"), ("fp32+shortlist", "shortlist"), ("int8+shortlist", "int8_shortlist")):
        fp32_bleu, bleu_ = dec("fp32", b, "bleu"), dec(name, b, "bleu")
        figures.update({
            f"{key}_beam5_sent_s": dec(name, b, "sent_s"), f"{key}_greedy_sent_s": dec(name, 1, "sent_s"),
            f"{key}_beam5_speedup": ratio(dec(name, b, "sent_s"), dec("fp32", b, "sent_s")),
            f"{key}_greedy_speedup": ratio(dec(name, 1, "sent_s"), dec("fp32", 1, "sent_s")),
            f"{key}_bleu_delta": None if bleu_ is None or fp32_bleu is None else bleu_ - fp32_bleu,
        })
    return figures


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
        "train_ratio": ratio(tok_s(headline), tok_s("peer")), "train_ratio_fp32": ratio(tok_s("fp32"), tok_s("peer")),
        "greedy_sent_s": dec(headline, 1, "sent_s"), "peer_greedy_sent_s": dec("peer", 1, "sent_s"),
        "greedy_ratio": ratio(dec(headline, 1, "sent_s"), dec("peer", 1, "sent_s")),
        "beam5_sent_s": dec(headline, b, "sent_s"), "peer_beam5_sent_s": dec("peer", b, "sent_s"),
        "beam5_ratio": ratio(dec(headline, b, "sent_s"), dec("peer", b, "sent_s")),
        "train_fraction_of_peak": of_peak(train_gflops),
        "beam5_fraction_of_peak": of_peak(dec(headline, b, "gflops")),
        "peak_rss_mb": speed[headline]["peak_rss_mb"],
        "peer_peak_rss_mb": speed["peer"]["peak_rss_mb"] if "peer" in speed else None,
        **variant_figures(dec, b),
        # the rest
        "cpu_capability": machine.capability, "device": s.device, "gpu": machine.gpu or None, "threads": s.threads,
        "torch": torch.__version__, "auto_dtype": auto, "bf16_counts": bf16_counts,
        "dev_bleu_fp32": models["fp32"].get("dev_bleu_last", dev_bleu(models["fp32"])),
        "dev_bleu_auto": models[auto].get("dev_bleu_last", dev_bleu(models[auto])),
        "peer_dev_bleu": dev_bleu(models["peer"]) if "peer" in models else None,
        "train_tok_s_fp32": tok_s("fp32"), "train_tok_s_auto": tok_s(auto),
        "tgt_tokens_per_update": speed[headline]["per_update"],
        "peer_tgt_tokens_per_update": speed["peer"]["per_update"] if "peer" in speed else None,
        "peer_batch_size": peer_batch_size,
        "epoch_seconds": speed[headline]["epoch_seconds"], "epoch_seconds_fp32": speed["fp32"]["epoch_seconds"],
        "peer_epoch_seconds": speed["peer"]["epoch_seconds"] if "peer" in speed else None,
        "greedy_sent_s_fp32": dec("fp32", 1, "sent_s"), "beam5_sent_s_fp32": dec("fp32", b, "sent_s"),
        "greedy_ratio_fp32": ratio(dec("fp32", 1, "sent_s"), dec("peer", 1, "sent_s")),
        "beam5_ratio_fp32": ratio(dec("fp32", b, "sent_s"), dec("peer", b, "sent_s")),
        "greedy_bleu": dec(headline, 1, "bleu"), "peer_greedy_bleu": dec("peer", 1, "bleu"),
        "beam5_bleu": dec(headline, b, "bleu"), "peer_beam5_bleu": dec("peer", b, "bleu"),
        "greedy_len": dec(headline, 1, "len"), "peer_greedy_len": dec("peer", 1, "len"),
        "beam5_len": dec(headline, b, "len"), "peer_beam5_len": dec("peer", b, "len"), "ref_len": mean_words(refs),
        "peak_gflops_fp32": peak.rates["fp32"], "peak_gflops_bf16": peak.rates["bf16"], "peak_gflops": peak.best,
        "train_flops_per_tgt_token": train_flops, "train_gflops": train_gflops,
        "train_fraction_of_peak_fp32": of_peak(tok_s("fp32") * train_flops / 1e9),
        "beam5_flops_per_hyp_token": dec(headline, b, "flops_per_hyp_token"),
        "beam5_gflops": dec(headline, b, "gflops"), "greedy_gflops": dec(headline, 1, "gflops"),
        "greedy_fraction_of_peak": of_peak(dec(headline, 1, "gflops")),
        "decode_peak_rss_mb": dec(headline, b, "peak_rss_mb"), "peer_decode_peak_rss_mb": dec("peer", b, "peak_rss_mb"),
        "models": {name: {"updates": m["updates"], "dev_bleu": dev_bleu(m)} for name, m in models.items()},
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
    if summary["int8_beam5_speedup"] is not None:
        print(f"  our fp32 model, beam {b}: int8 {summary['int8_beam5_speedup']:.2f}x fp32 (BLEU "
              f"{summary['int8_bleu_delta']:+.2f}); shortlist {summary['shortlist_beam5_speedup']:.2f}x (BLEU "
              f"{summary['shortlist_bleu_delta']:+.2f}); both {summary['int8_shortlist_beam5_speedup']:.2f}x (BLEU "
              f"{summary['int8_shortlist_bleu_delta']:+.2f})  {machine.tag('fp32')}")
    print(f"  took {seconds:.0f} s")
    return summary
