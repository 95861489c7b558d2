"""The recipes under recipes/: scripts that parse, configs that load, and the data stage of the Hugging Face
recipes (IWSLT, WMT14) run on tiny local files in the same `translation` layout, without network."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nmt.config import load_config

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
SCRIPTS = sorted(RECIPES.glob("**/*.sh"))
CONFIGS = sorted(RECIPES.glob("*/conf/*.yaml"))
HUB_RECIPES = {"iwslt14_de_en": "conf/de_en.yaml", "wmt14_en_de": "conf/en_de.yaml"}


def _id(path: Path) -> str:
    return str(path.relative_to(RECIPES))


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a recipe run in a test: this venv's nmt first on PATH, no network, own HF cache."""
    env = dict(os.environ)
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", HF_HOME=str(tmp_path / "hf"),
               HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", **extra)
    return env


def _run(args: list[str], tmp_path: Path, **extra_env: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=tmp_path, env=_env(tmp_path, **extra_env), capture_output=True, text=True,
                          timeout=300)


# --- Scripts ---


def test_every_recipe_has_its_scripts():
    for recipe in ("multi30k", "tatoeba_es_en", "iwslt14_de_en", "wmt14_en_de"):
        for script in ("run.sh", "decode.sh", "README.md"):
            assert (RECIPES / recipe / script).is_file(), f"{recipe}/{script}"
    assert (RECIPES / "multi30k" / "demo.sh").is_file() and (RECIPES / "toy_reverse" / "run.sh").is_file()


@pytest.mark.parametrize("script", SCRIPTS, ids=_id)
def test_script_parses(script: Path):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", [s for s in SCRIPTS if s.name != "lib.sh"], ids=_id)
def test_script_is_executable_with_env_bash(script: Path):
    text = script.read_text(encoding="utf-8")
    assert text.startswith("#!/usr/bin/env bash\n")
    assert os.access(script, os.X_OK), f"chmod +x {script}"
    assert "set -euo pipefail" in text or "\nexec " in text, "strict mode, or a one-line wrapper that execs"


@pytest.mark.parametrize("script", sorted(RECIPES.glob("*/run.sh")), ids=_id)
def test_run_sh_help_and_unknown_option(script: Path, tmp_path: Path):
    result = _run(["bash", str(script), "--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout and "--stage" in result.stdout
    result = _run(["bash", str(script), "--stgae", "1"], tmp_path)
    assert result.returncode == 1 and "unknown option --stgae" in result.stderr
    result = _run(["bash", str(script), "stray"], tmp_path)
    assert result.returncode == 1 and "unexpected argument 'stray'" in result.stderr


def test_demo_without_data_dir_says_what_to_set(tmp_path: Path):
    env = {k: v for k, v in _env(tmp_path).items() if k != "NMT_DATA_DIR"}
    result = subprocess.run(["bash", str(RECIPES / "multi30k" / "demo.sh")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "CPU kind: " in result.stderr and "NMT_DATA_DIR is not set" in result.stderr


def test_demo_with_a_wrong_data_dir_names_the_missing_file(tmp_path: Path):
    result = _run(["bash", str(RECIPES / "multi30k" / "demo.sh")], tmp_path, NMT_DATA_DIR=str(tmp_path))
    assert result.returncode == 1 and f"{tmp_path}/multi30k/train.de.gz not found" in result.stderr


def test_decode_without_a_trained_model_says_so(tmp_path: Path):
    result = _run(["bash", str(RECIPES / "multi30k" / "decode.sh"), f"exp_dir={tmp_path / 'exp'}"], tmp_path)
    assert result.returncode == 1 and "final.pt not found" in result.stderr


# --- Configs ---


@pytest.mark.parametrize("path", CONFIGS, ids=_id)
def test_config_loads(path: Path):
    cfg = load_config(path)
    assert cfg.exp_dir.startswith("exp/")
    assert cfg.data.test, "every recipe config scores at least one test set"


def test_each_config_has_its_own_experiment_folder():
    # base_de_en.yaml holds only the data section that the Multi30k de-en configs share; it is not run.
    folders = [load_config(p).exp_dir for p in CONFIGS if p.name != "base_de_en.yaml"]
    assert len(folders) == len(set(folders)), folders


@pytest.mark.parametrize("recipe, forward, backward", [
    ("multi30k", "de_en.yaml", "en_de.yaml"), ("tatoeba_es_en", "es_en.yaml", "en_es.yaml")])
def test_the_two_directions_mirror_each_other(recipe: str, forward: str, backward: str):
    a, b = (load_config(RECIPES / recipe / "conf" / name) for name in (forward, backward))
    assert (a.data.src_lang, a.data.tgt_lang) == (b.data.tgt_lang, b.data.src_lang)
    for spec_a, spec_b in [(a.data.train, b.data.train), (a.data.valid, b.data.valid),
                           *zip(a.data.test.values(), b.data.test.values())]:
        assert (spec_a.src, spec_a.tgt) == (spec_b.tgt, spec_b.src)
    assert (a.model, a.train, a.decode) == (b.model, b.train, b.decode)


def test_multi30k_full_config_keeps_the_data_of_base():
    base = load_config(RECIPES / "multi30k" / "conf" / "base_de_en.yaml").data
    full = load_config(RECIPES / "multi30k" / "conf" / "de_en.yaml").data
    assert (full.train, full.valid, full.test, full.subword) == (base.train, base.valid, base.test, base.subword)


@pytest.mark.parametrize("name", ["de_en.yaml", "en_de.yaml"])
def test_multi30k_config_files_exist(name: str, data_dir: Path):
    full = load_config(RECIPES / "multi30k" / "conf" / name).data
    for spec in [full.train, full.valid, *full.test.values()]:
        for path in (spec.src, spec.tgt):
            assert Path(path.replace("$NMT_DATA_DIR", str(data_dir))).is_file(), path


# Without attention the whole sequence passes through one vector: that config may also change sizes and training.
NO_ATTENTION_MAY_CHANGE = {"enc_hidden", "dec_hidden"}


def test_toy_configs_differ_only_in_cell_attention_and_folder():
    base = load_config(RECIPES / "toy_reverse" / "conf" / "gru_bahdanau.yaml")
    for path in (RECIPES / "toy_reverse" / "conf").glob("*.yaml"):
        cfg = load_config(path)
        assert path.stem == f"{cfg.model.cell}_{cfg.model.attention}" and cfg.exp_dir.endswith(path.stem)
        assert cfg.decode == base.decode
        assert (cfg.data.valid, cfg.data.test, cfg.data.subword) == (base.data.valid, base.data.test, base.data.subword)
        if cfg.model.attention != "none":  # without attention: its own, larger training set (train_large)
            assert cfg.data.train == base.data.train
        free = {"cell", "attention"} | (NO_ATTENTION_MAY_CHANGE if cfg.model.attention == "none" else set())
        other = {k: v for k, v in vars(cfg.model).items() if k not in free}
        assert other == {k: v for k, v in vars(base.model).items() if k not in free}
        if cfg.model.attention != "none":
            assert cfg.train == base.train


# --- The Hugging Face recipes' data stage on a tiny local fixture ---

WORDS = {"haus": "house", "katze": "cat", "hund": "dog", "baum": "tree", "auto": "car", "buch": "book"}


def _rows(n: int, seed: int) -> list[dict]:
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = [rng.choice(sorted(WORDS)) for _ in range(rng.randint(2, 6))]
        rows.append({"translation": {"de": " ".join(words), "en": " ".join(WORDS[w] for w in words)}})
    return rows


def _write_fixture(folder: Path, fmt: str) -> dict[str, Path]:
    """train/validation/test files in the Hub's `translation` layout, as parquet or jsonl."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, n, seed in (("train", 120, 1), ("validation", 12, 2), ("test", 12, 3)):
        rows = _rows(n, seed)
        path = folder / f"{split}.{fmt}"
        if fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(rows), path)
        else:
            path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        files[split] = path
    return files


def _fixture_overrides(config: Path, files: dict[str, Path], fmt: str, exp: Path) -> list[str]:
    """Point every split of a recipe config at the fixture (the test sets keep their names)."""
    loader = "parquet" if fmt == "parquet" else "json"
    overrides = [f"exp_dir={exp}", "data.subword.vocab_size=40"]
    targets = {"train": files["train"], "valid": files["validation"]}
    targets.update({f"test.{name}": files["test"] for name in load_config(config).data.test})
    for key, path in targets.items():
        overrides += [f"data.{key}.hf={loader}", f"data.{key}.hf_files=[{path}]"]
    return overrides


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    return tmp_path / "hf_cache"


@pytest.mark.parametrize("recipe", sorted(HUB_RECIPES))
@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_hub_recipe_prepares_a_local_fixture(recipe: str, fmt: str, tmp_path: Path, hf_cache: Path, run_cli):
    config = RECIPES / recipe / HUB_RECIPES[recipe]
    assert load_config(config).data.train.hf_field == "translation"
    files = _write_fixture(tmp_path / "data", fmt)
    exp = tmp_path / "exp"
    result = run_cli("prepare", config, *_fixture_overrides(config, files, fmt, exp))
    assert result.code == 0, result.err
    assert "train pairs: 120  valid pairs: 12" in result.out
    assert (exp / "spm" / "joint.model").is_file()
    assert sorted(p.name.split(".")[0] for p in (exp / "cache").glob("*.npz")) == ["train", "valid"]


@pytest.mark.parametrize("recipe", sorted(HUB_RECIPES))
def test_hub_recipe_run_sh_data_stages_on_a_local_fixture(recipe: str, tmp_path: Path):
    config = RECIPES / recipe / HUB_RECIPES[recipe]
    files = _write_fixture(tmp_path / "data", "parquet")
    exp = tmp_path / "exp"
    result = _run(["bash", str(RECIPES / recipe / "run.sh"), "--stage", "0", "--stop-stage", "1",
                   *_fixture_overrides(config, files, "parquet", exp)], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "train: 120 pairs" in result.stdout and "valid: 12 pairs" in result.stdout
    assert "train pairs: 120" in result.stdout
    assert (exp / "spm" / "joint.model").is_file() and (exp / "data_checked.txt").is_file()
    again = _run(["bash", str(RECIPES / recipe / "run.sh"), "--stage", "0", "--stop-stage", "0",
                  *_fixture_overrides(config, files, "parquet", exp)], tmp_path)
    assert again.returncode == 0 and "data already checked" in again.stderr


def test_unreachable_hub_id_says_to_set_hf_files(tmp_path: Path):
    config = RECIPES / "wmt14_en_de" / "conf" / "en_de.yaml"
    result = _run([str(Path(sys.executable).parent / "nmt"), "prepare", str(config), f"exp_dir={tmp_path / 'exp'}",
                   "data.train.hf=nmt-tests/no-such-dataset"], tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "nmt-tests/no-such-dataset" in lines[0] and "hf_files" in lines[0]


def test_iwslt_download_without_network_says_what_to_do(tmp_path: Path):
    config = RECIPES / "iwslt14_de_en" / "conf" / "de_en.yaml"
    missing = {split: tmp_path / "absent" / f"{split}.parquet" for split in ("train", "validation", "test")}
    result = _run(["bash", str(RECIPES / "iwslt14_de_en" / "run.sh"), "--stop-stage", "0",
                   *_fixture_overrides(config, missing, "parquet", tmp_path / "exp")], tmp_path)
    assert result.returncode == 2
    assert "cannot list the parquet export of IWSLT/iwslt2017" in result.stderr and "hf_files" in result.stderr


# --- recipes/common/recipe.py ---


@pytest.fixture(scope="module")
def recipe_py():
    spec = importlib.util.spec_from_file_location("recipe_py", RECIPES / "common" / "recipe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_best_checkpoints_ranks_by_dev_bleu_among_those_kept(recipe_py, tmp_path: Path):
    (tmp_path / "checkpoints").mkdir()
    records = [{"kind": "train", "update": 1}, {"kind": "valid", "update": 100, "bleu": 20.0},
               {"kind": "valid", "update": 200, "bleu": 25.0}, {"kind": "valid", "update": 300, "bleu": 24.0},
               {"kind": "valid", "update": 400, "bleu": 25.0}, {"kind": "valid", "update": 500, "bleu": 10.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"cut sho')
    for update in (200, 300, 400, 500):
        (tmp_path / "checkpoints" / f"best_u{update:07d}.pt").touch()
    names = [p.name for p in recipe_py.best_checkpoints(tmp_path, 3)]
    assert names == ["best_u0000400.pt", "best_u0000200.pt", "best_u0000300.pt"]


def test_get_reads_dotted_keys_with_overrides(recipe_py, capsys: pytest.CaptureFixture):
    config = str(RECIPES / "multi30k" / "conf" / "de_en.yaml")
    assert recipe_py.main(["get", config, "train.average_best", "train.average_best=5"]) == 0
    assert recipe_py.main(["get", config, "data.test"]) == 0
    assert capsys.readouterr().out.split() == ["5", "test2016"]
    assert recipe_py.main(["get", config, "train.no_such_key"]) == 2
    assert "no key train.no_such_key" in capsys.readouterr().err


def test_results_current_needs_every_test_set_with_this_checkpoint(recipe_py, tmp_path: Path):
    cfg = load_config(RECIPES / "multi30k" / "conf" / "de_en.yaml", [f"exp_dir={tmp_path}"])
    ckpt = tmp_path / "final.pt"
    ckpt.touch()
    assert not recipe_py.results_current(cfg, ckpt)
    results = {"test2016": {"bleu": 1.0, "checkpoint": str(ckpt), "beam": cfg.decode.beam}}
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert recipe_py.results_current(cfg, ckpt)
    assert not recipe_py.results_current(load_config(RECIPES / "multi30k" / "conf" / "de_en.yaml",
                                                     [f"exp_dir={tmp_path}", "decode.beam=1"]), ckpt)
    os.utime(ckpt, (ckpt.stat().st_atime, (tmp_path / "results.json").stat().st_mtime + 10))
    assert not recipe_py.results_current(cfg, ckpt)
