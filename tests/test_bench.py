"""The benchmark's plumbing (tools/bench*.py), so that a renamed nmt class, function or config key breaks a test
rather than the benchmark docs/BENCHMARKS.md cites: our workers run on a tiny corpus and checkpoint, the bench's
config is loaded by nmt's own loader, and the tools are checked for what they must not do. No timings."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from nmt.config import config_from_dict
from nmt.model.flops import ModelFlops
from nmt.translator import Translator
from training_fixtures import REPO, run_process, tiny_train_dict, write_yaml
from translation_fixtures import make_checkpoint, synthetic_sentences

TOOLS = REPO / "tools"
sys.path.insert(0, str(TOOLS))

import bench  # noqa: E402
import bench_common  # noqa: E402
import bench_ours  # noqa: E402
import bench_setup  # noqa: E402


def _settings(tmp_path: Path) -> bench_setup.Settings:
    return bench_setup.Settings(
        cache=tmp_path / "cache", data_dir=tmp_path, quick=True, device="cpu", threads=1, skip_peer=True,
        warmup_updates=1, updates=2, decode_sentences=20, dev_sentences=20, decode_batch_tokens=8000,
        target_bleu=10.0, max_model_updates=3000, model_updates=0, valid_every=100, peak_seconds=0.01)


def test_our_training_workers_run_nmts_training_on_a_tiny_corpus(tiny_corpus, tmp_path):
    raw = tiny_train_dict(tiny_corpus, tmp_path / "exp", train={
        "max_updates": 4, "valid_every": 2, "valid_bleu": True, "stop_at_bleu": 99.0, "keep_best": 1})
    config = str(write_yaml(raw, tmp_path / "bench.yaml"))
    speed = bench_ours.worker_ours_train_speed({"config": config, "warmup": 1, "updates": 2, "threads": 1,
                                                "device": "cpu"})
    assert len(speed["tokens"]) == 2 and all(n > 0 for n in speed["tokens"])
    assert speed["dtype"] == "fp32" and speed["tok_s"] > 0 and speed["peak_rss_mb"] > 0

    model = bench_ours.worker_ours_model({"config": config, "threads": 1})
    assert Path(model["checkpoint"]).is_file()
    assert model["updates"] == 4 and set(model["dev_bleu_by_update"]) == {"2", "4"}
    assert model["dev_bleu"] == max(model["dev_bleu_by_update"].values())


def test_our_decode_worker_translates_with_the_translator_and_reads_its_search_stats(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "tiny.pt")
    sentences = synthetic_sentences(25, seed=4)
    source = tmp_path / "test.de"
    source.write_text("".join(s + "\n" for s in sentences), encoding="utf-8")
    result = bench_ours.worker_ours_decode({"checkpoint": str(checkpoint), "dtype": "fp32", "source": str(source),
                                            "alpha": 1.0, "batch_tokens": 64, "beams": [1, 3], "threads": 1,
                                            "device": "cpu"})
    translator = Translator.load(checkpoint, device="cpu", dtype="fp32")
    assert result["sentences"] == 25
    assert result["src_tokens"] == sum(len(ids) + 1 for ids in translator.encode(sentences))
    for beam in (1, 3):
        run = result["beams"][str(beam)]
        expected = translator.with_options(beam=beam, alpha=1.0, length_penalty="gnmt", batch_tokens=64)
        assert run["hyps"] == [h[0].text for h in expected.translate_lines(sentences)]
        assert run["hyp_tokens"] == expected.search.stats.rows > 0
        assert run["hyp_src_positions"] == expected.search.stats.row_src_positions >= run["hyp_tokens"]
    assert result["beams"]["3"]["hyp_tokens"] > result["beams"]["1"]["hyp_tokens"]


def test_the_peak_worker_measures_each_shape():
    result = bench_common.worker_peak({"device": "cpu", "threads": 1, "shapes": [[8, 16, 24]], "seconds": 0.01})
    assert [(r["dtype"], r["shape"]) for r in result["products"]] == [("fp32", [8, 16, 24]), ("bf16", [8, 16, 24])]
    assert all(r["gflops"] > 0 for r in result["products"])


def test_the_bench_config_is_one_nmt_loads_and_the_flop_count_reads(tmp_path):
    s = _settings(tmp_path)
    cfg = config_from_dict(bench_setup.nmt_config(s, tmp_path / "exp", None, "fp32", max_updates=3,
                                                  stop_at_bleu=10.0))
    assert cfg.model == bench_setup.bench_model()
    assert cfg.train.stop_at_bleu == 10.0 and cfg.decode.length_penalty == "gnmt"
    flops = ModelFlops.of(cfg.model, bench_setup.VOCAB)
    assert 13e6 < flops.decoder_step(0) < 14e6  # docs/BENCHMARKS.md: about 13.7 M per decoder step

    plain = tmp_path / "plain"
    data = bench_setup.Data(plain=plain, prep_exp=tmp_path, spm_model=tmp_path / "joint.model",
                            joey_vocab=tmp_path / "vocab.txt", valid_prefix=plain / "valid",
                            test_prefix=plain / "test2016", vocab_size=bench_setup.VOCAB, src_lengths=[],
                            tgt_lengths=[], joey_src_lengths=[], joey_tgt_lengths=[], ours_batch_tokens=[])
    joey = bench_setup.joey_config(s, data, tmp_path / "joey", 8656, 100, 10)["model"]
    assert joey["decoder"]["hidden_size"] == cfg.model.dec_hidden
    assert joey["encoder"]["hidden_size"] == cfg.model.enc_hidden
    assert joey["encoder"]["embeddings"]["embedding_dim"] == cfg.model.emb_dim


def test_the_command_line_parses_the_smoke_options_of_docs_benchmarks(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("NMT_DATA_DIR", str(data_dir))
    s = bench.parse_args(["--quick", "--skip-peer", "--threads", "1", "--updates", "3", "--warmup-updates", "1",
                          "--decode-sentences", "20", "--dev-sentences", "20", "--model-updates", "2",
                          "--cache", str(tmp_path)])
    assert (s.updates, s.warmup_updates, s.decode_sentences, s.model_updates, s.skip_peer) == (3, 1, 20, 2, True)
    with pytest.raises(SystemExit):
        bench.parse_args(["--target-bleu", "0"])


def test_the_peer_worker_imports_nothing_from_nmt():
    """It runs under the peer's venv, where nmt is not installed."""
    code = ("import sys; sys.path.insert(0, 'tools'); import bench_peer; "
            "assert not [m for m in sys.modules if m.split('.')[0] == 'nmt'], 'nmt imported'")
    done = run_process([], cwd=REPO, code=code, env={"PYTHONPATH": ""})
    assert done.returncode == 0, done.stderr


def _nmt_names(tree: ast.AST) -> set[str]:
    """The names a module binds to nmt's modules, classes and functions."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update((a.asname or a.name).split(".")[0] for a in node.names if a.name.split(".")[0] == "nmt")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "nmt":
            names.update(a.asname or a.name for a in node.names)
    return names


def _root(node: ast.AST) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def replaced_nmt_attributes(source: str) -> list[int]:
    """Lines that assign to (or delete, or setattr) an attribute of something imported from nmt."""
    tree = ast.parse(source)
    names = _nmt_names(tree)
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign | ast.Delete):
            targets = node.targets if isinstance(node, ast.Assign | ast.Delete) else [node.target]
            flat = [e for t in targets for e in (t.elts if isinstance(t, ast.Tuple) else [t])]
            if any(isinstance(t, ast.Attribute) and _root(t) in names for t in flat):
                lines.append(node.lineno)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr"
              and node.args and _root(node.args[0]) in names):
            lines.append(node.lineno)
    return lines


def test_no_tool_replaces_a_part_of_nmt_at_run_time():
    assert replaced_nmt_attributes("import nmt.search\nnmt.search.Ensemble.step = None\n") == [2]
    assert replaced_nmt_attributes("from nmt import train as t\nt.Trainer, x = 1, 2\n") == [2]
    assert replaced_nmt_attributes("from nmt.train import Trainer\nsetattr(Trainer, 'run', None)\n") == [2]
    for path in sorted(TOOLS.glob("*.py")):
        assert replaced_nmt_attributes(path.read_text(encoding="utf-8")) == [], path.name


def test_the_int8_and_shortlist_variants_decode_through_the_same_worker(tiny_corpus, tmp_path):
    raw = tiny_train_dict(tiny_corpus, tmp_path / "exp", train={"max_updates": 2, "valid_bleu": True})
    config = str(write_yaml(raw, tmp_path / "bench.yaml"))
    model = bench_ours.worker_ours_model({"config": config, "threads": 1})
    table = bench_ours.worker_ours_shortlist({"config": config, "output": str(tmp_path / "shortlist.npz")})
    assert Path(table["shortlist"]).is_file() and table["candidates"] > 0
    source = tmp_path / "test.de"
    source.write_text("".join(s + "\n" for s, _ in tiny_corpus.test[:8]), encoding="utf-8")
    spec = {"checkpoint": model["checkpoint"], "source": str(source), "alpha": 1.0, "batch_tokens": 64,
            "beams": [1, 2], "threads": 1, "device": "cpu"}
    for dtype, shortlist in (("int8", None), ("fp32", table["shortlist"]), ("int8", table["shortlist"])):
        result = bench_ours.worker_ours_decode({**spec, "dtype": dtype, "shortlist": shortlist})
        assert result["dtype"] == dtype and all(len(b["hyps"]) == 8 for b in result["beams"].values())
        expected = Translator.load(model["checkpoint"], device="cpu", dtype=dtype, alpha=1.0, length_penalty="gnmt",
                                   batch_tokens=64, beam=2, shortlist=shortlist).translate_lines(
            source.read_text(encoding="utf-8").splitlines())
        assert result["beams"]["2"]["hyps"] == [h[0].text for h in expected]
