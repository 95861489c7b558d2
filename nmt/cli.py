"""`nmt`: the command line, a thin layer over the library.

Each subcommand parses its options, calls one library function and prints the result. A user's mistake
(`NMTError`) becomes exit code 2 and a single line on stderr; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from nmt.errors import NMTError
from nmt.outputs import StdoutError, flush_stdout

log = logging.getLogger("nmt")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def _count(minimum: int):  # -> a type for argparse
    """An integer option of at least `minimum`: argparse names the option in its one-line error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


class _Parser(argparse.ArgumentParser):
    """argparse that exits with 2 and one line (its default prints the usage too)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def cmd_prepare(args: argparse.Namespace) -> int:
    from nmt.config import load_config, save_config
    from nmt.data.prepare import prepare

    cfg = load_config(args.config, args.overrides)
    Path(cfg.exp_dir).mkdir(parents=True, exist_ok=True)
    save_config(cfg, Path(cfg.exp_dir) / "config.yaml")
    data = prepare(cfg)
    print(f"train pairs: {len(data.train)}  valid pairs: {len(data.valid)}  "
          f"vocab: {len(data.src_model)}/{len(data.tgt_model)}")
    print(f"padding efficiency at max_tokens={cfg.train.max_tokens}: {data.efficiency:.3f}")
    print(f"prepared in {data.seconds:.2f}s ({cfg.exp_dir})")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from nmt.config import load_config
    from nmt.train import train

    cfg = load_config(args.config, args.overrides)
    return train(cfg, resume=args.resume, run_tests=not args.no_test)


def cmd_test(args: argparse.Namespace) -> int:
    from nmt.config import load_config
    from nmt.evaluate import evaluate_tests

    cfg = load_config(args.config, args.overrides)
    results = evaluate_tests(cfg, args.checkpoint)
    print(json.dumps(results))
    return 0


def cmd_average(args: argparse.Namespace) -> int:
    from nmt.checkpoint import average_checkpoints, save_atomic
    from nmt.outputs import check_outputs, check_writable

    check_outputs([args.output], args.inputs)
    check_writable(args.output)
    save_atomic(average_checkpoints(args.inputs), args.output)
    print(f"averaged {len(args.inputs)} checkpoints into {args.output}")
    return 0


def cmd_shortlist(args: argparse.Namespace) -> int:
    from nmt.config import load_config
    from nmt.data.corpus import split_files
    from nmt.data.prepare import prepare
    from nmt.outputs import check_outputs, check_writable
    from nmt.shortlist import build_shortlist

    cfg = load_config(args.config, args.overrides)
    output = args.output or str(Path(cfg.exp_dir) / "shortlist.npz")
    check_outputs([output], [args.config, *split_files(cfg.data.train)])
    data = prepare(cfg)  # creates EXP, reuses its cache
    exp = Path(cfg.exp_dir)  # what it read there: the SentencePiece models and the encoded corpus
    check_outputs([output], [*sorted((exp / "spm").glob("*")), *sorted((exp / "cache").glob("*"))])
    check_writable(output)
    table = build_shortlist(data.train, data.src_model, data.tgt_model, args.per_source, args.frequent)
    table.save(output)
    print(f"wrote {output}: {len(table.targets)} candidates for {len(table.offsets) - 1} source subwords, "
          f"{len(table.frequent)} always in")
    return 0


def cmd_translate(args: argparse.Namespace) -> int:
    import torch

    from nmt.glossary import Glossary
    from nmt.translate import Steering, translate_file
    from nmt.translator import Translator

    if args.threads:
        torch.set_num_threads(args.threads)
    translator = Translator.load(
        args.checkpoint, args.device, args.dtype, style="cli", beam=args.beam, nbest=args.nbest, alpha=args.alpha,
        max_len_a=args.max_len_a, max_len_b=args.max_len_b, batch_tokens=args.batch_tokens,
        greedy_floor=True if args.greedy_floor else None, temperature=args.temperature, topk=args.topk,
        topp=args.topp, seed=args.seed, ordered_constraints=True if args.ordered_constraints else None,
        shortlist=args.shortlist)
    glossary = Glossary.load(args.glossary, args.glossary_ignore_case) if args.glossary is not None else None
    translate_file(translator, args.input, args.output, args.alignments, args.quiet, args.buffer_lines,
                   Steering(args.constraints, args.prefix, glossary))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import torch

    from nmt.glossary import Glossary
    from nmt.precision import resolve_device
    from nmt.serve.server import serve
    from nmt.serve.settings import BatchLimits, ServeSettings

    threads = args.threads or torch.get_num_threads()
    # auto: two searches on a CPU, one thread each (32 clients on the demo model, AVX2-only CPU: 45.6 and 43.8
    # sentences/s against 38.4 and 37.8 for one search on two threads; docs/BENCHMARKS.md); a GPU runs one.
    searches = args.searches or (2 if resolve_device(args.device).type == "cpu" and threads >= 2 else 1)
    torch.set_num_threads(max(1, threads // searches))  # each search its share of the threads
    limits = BatchLimits(args.max_batch_tokens, args.max_batch_requests, args.max_wait_ms / 1000, args.max_queue,
                         searches)
    settings = ServeSettings(
        args.host, args.port, limits, args.max_sentences, args.max_body_bytes, args.timeout,
        args.api_key or os.environ.get("NMT_API_KEY") or None, tuple(args.cors_origin), args.max_connections,
        not args.no_access_log)
    glossaries = {}
    for spec in args.glossary:
        name, sep, path = spec.partition("=")
        if not sep or not name:
            raise NMTError(f"--glossary {spec}: expected NAME=FILE")
        glossaries[name] = Glossary.load(path, args.glossary_ignore_case)
    return serve(args.checkpoint, settings, args.device, args.dtype, glossaries)


def cmd_score(args: argparse.Namespace) -> int:
    from nmt.evaluate import format_scores, score_files

    scores = score_files(args.ref, args.input)
    print(json.dumps(scores) if args.json else format_scores(scores))
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    from nmt.data.split import split_corpus

    manifest = split_corpus(args.src, args.tgt, tuple(args.langs), args.key, args.valid, args.test, args.seed,
                            args.output)
    print("  ".join(f"{name}: {size['pairs']} pairs ({size['keys']} distinct {args.key})"
                    for name, size in manifest["sizes"].items()))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from nmt.plot import plot_learning_curves

    out = plot_learning_curves(args.exp, args.output)
    print(f"wrote {out}")
    return 0


def cmd_plot_attention(args: argparse.Namespace) -> int:
    from nmt.plot import plot_attention

    out = plot_attention(args.alignments, args.index, args.output)
    print(f"wrote {out}")
    return 0


def _add_serve_parser(sub: argparse._SubParsersAction) -> None:
    from nmt.serve.settings import ServeSettings  # no torch, no FastAPI: `nmt --help` stays quick

    defaults = ServeSettings()
    limits = defaults.limits
    p = sub.add_parser("serve", help="serve models over HTTP: a JSON API, a web page, batched requests",
                       description="Translate over HTTP: POST /v1/translate, GET /v1/models, /health, /metrics, "
                       "the web page at / and the API documentation at /docs. Requests that arrive together "
                       "are translated in one search. SIGTERM finishes the requests in progress and exits 0.")
    p.add_argument("-c", "--checkpoint", action="append", required=True, metavar="[NAME=]CKPT",
                   help="a model to serve, under NAME (default: its language pair, e.g. de-en); repeatable")
    p.add_argument("--host", default=defaults.host, help=f"address to listen on (default: {defaults.host}, this "
                   "machine only)")
    p.add_argument("--port", type=int, default=defaults.port, help=f"port (default: {defaults.port}; 0: a free one)")
    p.add_argument("--max-batch-tokens", type=_count(1), default=limits.max_batch_tokens,
                   help="source tokens of the requests one search takes, or a stream holds at a time (default: "
                   f"{limits.max_batch_tokens})")
    p.add_argument("--max-batch-requests", type=_count(0), default=limits.max_batch_requests,
                   help="requests one search takes, or a stream holds at a time (default 0: no limit; 1 turns "
                   "batching off)")
    p.add_argument("--max-wait-ms", type=float, default=limits.max_wait * 1000,
                   help="how long a request waits for others to share its search (default: "
                   f"{limits.max_wait * 1000:g}; 0: never)")
    p.add_argument("--searches", type=_count(0), default=0,
                   help="searches of one model at a time, the CPU threads shared among them (default: 0, auto: 2 "
                   "on a CPU with 2 threads or more, else 1)")
    p.add_argument("--max-queue", type=_count(1), default=limits.max_queue,
                   help=f"sentences waiting per model; a request beyond them gets 503 (default: {limits.max_queue})")
    p.add_argument("--max-sentences", type=_count(1), default=defaults.max_sentences,
                   help=f"sentences per request (default: {defaults.max_sentences})")
    p.add_argument("--max-body-bytes", type=_count(1), default=defaults.max_body_bytes,
                   help=f"request body size (default: {defaults.max_body_bytes})")
    p.add_argument("--timeout", type=float, default=defaults.timeout,
                   help=f"seconds a request may wait for its translation, then 504 (default: {defaults.timeout:g})")
    p.add_argument("--max-connections", type=_count(1), default=defaults.max_connections,
                   help="open connections and requests in progress; more get 503 (default: "
                   f"{defaults.max_connections})")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1 (default: "
                   "$NMT_API_KEY; none when unset)")
    p.add_argument("--cors-origin", action="append", default=[],
                   help="let web pages from this origin call the API (repeatable; default: none)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: auto)")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16", "int8"],
                   help="compute dtype; auto picks bf16 only where the hardware does it fast; int8 (CPUs) puts the "
                   "decoder's products and the vocabulary projection in int8")
    p.add_argument("--glossary", action="append", default=[], metavar="NAME=FILE",
                   help="a glossary (source term TAB target term per line) requests may name; repeatable")
    p.add_argument("--glossary-ignore-case", action="store_true", help="match glossaries' source terms in any case")
    p.add_argument("--threads", type=_count(0), default=0, help="CPU threads (default: torch's choice)")
    p.add_argument("--no-access-log", action="store_true", help="do not log each request")
    p.set_defaults(func=cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="nmt", description="Recurrent neural machine translation: prepare data, train, "
                     "translate and score.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    _add_experiment_commands(sub)
    _add_translate_command(sub)
    _add_serve_parser(sub)
    _add_file_commands(sub)
    return parser


def _add_experiment_commands(sub: Any) -> None:
    """The commands that take an experiment config: prepare, train, test; and average, on a run's checkpoints."""
    overrides_help = "config overrides as section.key=value, e.g. train.lr=0.002 model.cell=lstm"

    p = sub.add_parser("prepare", help="train SentencePiece and encode the corpus into the experiment cache",
                       description="Train the SentencePiece model(s) on the training split and encode every split "
                       "into integer arrays cached in EXP/cache; a second run reuses both.")
    p.add_argument("config", help="experiment YAML config")
    p.add_argument("overrides", nargs="*", help=overrides_help)
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="train a model (runs prepare first when needed)",
                       description="Train a model into the experiment folder: checkpoints/, metrics.jsonl, "
                       "final.pt and results.json. SIGINT/SIGTERM save a checkpoint before exiting.")
    p.add_argument("config", help="experiment YAML config")
    p.add_argument("overrides", nargs="*", help=overrides_help)
    p.add_argument("--resume", action="store_true", help="continue from the newest good checkpoint in EXP")
    p.add_argument("--no-test", action="store_true", help="do not translate the test sets after training")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("test", help="translate and score the config's test sets into EXP/results.json",
                       description="Translate every test set of the config with a checkpoint (EXP/final.pt by "
                       "default), write the translations to EXP/test/ and the scores to EXP/results.json.")
    p.add_argument("config", help="experiment YAML config")
    p.add_argument("overrides", nargs="*", help=overrides_help)
    p.add_argument("-c", "--checkpoint", default=None, help="checkpoint to use (default: EXP/final.pt)")
    p.set_defaults(func=cmd_test)

    p = sub.add_parser("shortlist", help="build a lexical shortlist from the training data, for --shortlist",
                       description="Count which target subwords each source subword's sentences contain in the "
                       "training split (the experiment's encoded cache) and keep, per source subword, the "
                       "PER_SOURCE most associated ones (Dice), plus the FREQUENT most frequent target subwords. "
                       "`nmt translate --shortlist` then scores only those (see docs/BENCHMARKS.md).")
    p.add_argument("config", help="experiment YAML config")
    p.add_argument("overrides", nargs="*", help=overrides_help)
    p.add_argument("-o", "--output", default=None, help="where to write it (default: EXP/shortlist.npz)")
    p.add_argument("--per-source", type=_count(1), default=50, help="candidates per source subword (default: 50)")
    p.add_argument("--frequent", type=_count(0), default=200, help="frequent target subwords always in (default: 200)")
    p.set_defaults(func=cmd_shortlist)

    p = sub.add_parser("average", help="average the parameters of several checkpoints",
                       description="Average model parameters of checkpoints of one run into a new checkpoint.")
    p.add_argument("inputs", nargs="+", help="checkpoints to average")
    p.add_argument("-o", "--output", required=True, help="where to write the averaged checkpoint")
    p.set_defaults(func=cmd_average)


def _add_translate_command(sub: Any) -> None:
    p = sub.add_parser("translate", help="translate a file (or stdin) with one or more checkpoints",
                       description="Translate line by line: output line N always translates input line N. "
                       "Several -c checkpoints decode as an ensemble.")
    p.add_argument("-c", "--checkpoint", action="append", required=True,
                   help="checkpoint file; repeat for an ensemble")
    p.add_argument("-i", "--input", default=None, help="input file (default: stdin)")
    p.add_argument("-o", "--output", default=None, help="output file (default: stdout)")
    p.add_argument("--beam", type=int, default=None, help="beam size; 1 is greedy (default: the checkpoint's)")
    p.add_argument("--nbest", type=int, default=1, help="write N hypotheses per line as 'index ||| text ||| score'")
    p.add_argument("--alpha", type=float, default=None, help="length normalisation strength (default: config)")
    p.add_argument("--max-len-a", type=float, default=None, help="max output length = a * source length + b")
    p.add_argument("--max-len-b", type=int, default=None, help="see --max-len-a")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: auto)")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16", "int8"],
                   help="compute dtype; auto picks bf16 only where the hardware does it fast; int8 (CPUs) puts the "
                   "decoder's products and the vocabulary projection in int8")
    p.add_argument("--batch-tokens", type=int, default=None, help="source tokens per batch (default: config)")
    p.add_argument("--alignments", default=None, help="write each sentence's attention matrix to this JSONL file")
    p.add_argument("--temperature", type=float, default=None, help="sample instead of searching, at this temperature")
    p.add_argument("--topk", type=int, default=0, help="with --temperature: sample from the k most likely tokens")
    p.add_argument("--topp", type=float, default=None,
                   help="with --temperature: sample from the fewest most likely tokens whose probability reaches P "
                   "(nucleus sampling; default 1: all)")
    p.add_argument("--seed", type=int, default=1, help="random seed for sampling")
    p.add_argument("--greedy-floor", action="store_true",
                   help="also run greedy search and keep its translation where it scores higher than the beam's")
    p.add_argument("--constraints", action="store_true",
                   help="each input line is SOURCE<TAB>PHRASE<TAB>...: target phrases its translation must contain "
                   "(lexical constraints, fairseq-interactive's format)")
    p.add_argument("--ordered-constraints", action="store_true", help="constraints must appear in their given order")
    p.add_argument("--prefix", default=None, metavar="FILE",
                   help="line N of FILE is the text line N's translation starts with (empty: none)")
    p.add_argument("--glossary", default=None, metavar="FILE",
                   help="SOURCE<TAB>TARGET terms: a line containing a source term as whole words must translate it "
                   "with its target term")
    p.add_argument("--glossary-ignore-case", action="store_true", help="match the glossary's source terms in any case")
    p.add_argument("--threads", type=_count(0), default=0, help="CPU threads (default: torch's choice)")
    p.add_argument("--shortlist", default=None, help="score only each sentence's lexical shortlist, a file made "
                   "by `nmt shortlist` (off by default: see docs/BENCHMARKS.md for its speed and BLEU)")
    p.add_argument("--buffer-lines", type=_count(1), default=10_000,
                   help="translate at most N lines at a time (default 10000); a pipe that pauses is translated "
                   "at once, so lines typed one at a time come back one at a time")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or speed line")
    p.set_defaults(func=cmd_translate)


def _add_file_commands(sub: Any) -> None:
    """The commands on plain files: score, split, plot, plot-attention."""
    p = sub.add_parser("score", help="BLEU, chrF and TER of a hypothesis file against a reference (sacrebleu)",
                       description="Score detokenised hypotheses against references with sacrebleu.")
    p.add_argument("-r", "--ref", required=True, help="reference file")
    p.add_argument("-i", "--input", required=True, help="hypothesis file")
    p.add_argument("--json", action="store_true", help="print one JSON object (bleu, chrf, ter, signature)")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("split", help="split an aligned corpus into train/valid/test by one side's sentences",
                       description="Group the pairs by the sentence on the --key side, shuffle the groups with "
                       "--seed and deal whole groups to valid, test and train, so no key sentence occurs in two "
                       "splits. Writes OUT/{train,valid,test}.LANG and OUT/split.json; reruns reuse them.")
    p.add_argument("src", help="first side: one sentence per line (.gz allowed)")
    p.add_argument("tgt", help="second side, line-aligned with the first")
    p.add_argument("--langs", nargs=2, required=True, metavar=("SRC_LANG", "TGT_LANG"),
                   help="language codes of the two files, used in the output names")
    p.add_argument("--key", required=True, help="the language whose sentences may not cross splits")
    p.add_argument("--valid", type=int, required=True, help="pairs in the validation split")
    p.add_argument("--test", type=int, required=True, help="pairs in the test split")
    p.add_argument("--seed", type=int, default=1, help="seed of the group shuffle (default: 1)")
    p.add_argument("-o", "--output", required=True, help="folder for the split files")
    p.set_defaults(func=cmd_split)

    p = sub.add_parser("plot", help="draw an experiment's learning curves to PNG",
                       description="Read EXP/metrics.jsonl and draw train/dev loss, dev BLEU and tokens/s.")
    p.add_argument("exp", help="experiment folder")
    p.add_argument("-o", "--output", default=None, help="PNG path (default: EXP/learning_curves.png)")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("plot-attention", help="draw one sentence's attention matrix as a heatmap PNG",
                       description="Draw the attention of sentence INDEX from a file written by "
                       "`nmt translate --alignments`.")
    p.add_argument("alignments", help="file written by nmt translate --alignments")
    p.add_argument("--index", type=int, default=0, help="0-based sentence index (default: 0)")
    p.add_argument("-o", "--output", required=True, help="PNG path")
    p.set_defaults(func=cmd_plot_attention)


def _discard_stdout() -> None:
    """After stdout failed (a closed pipe, a full disk), send what is still buffered to /dev/null, so that the
    interpreter's last flush does not print a second error."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, io.UnsupportedOperation):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    try:
        code = args.func(args)
        flush_stdout()
        return code
    except NMTError as err:
        if isinstance(err, StdoutError):
            _discard_stdout()
        one_line = "\\n".join(str(err).splitlines())  # a file name may contain a line break
        print(f"nmt {args.command}: error: {one_line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nmt {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        _discard_stdout()
        return 0


if __name__ == "__main__":
    sys.exit(main())
