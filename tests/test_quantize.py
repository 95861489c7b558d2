"""nmt.quantize: int8 decoding stays close to fp32 and keeps every row independent of the others, so that a
sentence translates the same alone and in any batch."""

from __future__ import annotations

import dataclasses
import functools
import tempfile
from pathlib import Path

import pytest
import torch

from nmt.checkpoint import TrainedModel, load_trained_model
from nmt.config import DecodeConfig
from nmt.errors import NMTError
from nmt.precision import resolve_dtype
from nmt.quantize import Int8Linear, quantize_decoder
from nmt.translator import Translator
from translation_fixtures import make_checkpoint, synthetic_sentences

CPU = torch.device("cpu")


@pytest.mark.parametrize("bound", [1.0, None])
def test_an_int8_layer_is_close_to_fp32_and_each_row_is_independent_of_the_others(bound) -> None:
    torch.manual_seed(0)
    weight, bias = torch.randn(40, 24) * 0.2, torch.randn(40)
    layer = Int8Linear(weight, bias, bound)
    x = torch.rand(9, 24) * 2 - 1 if bound else torch.randn(9, 24) * 3
    expected = torch.nn.functional.linear(x, weight, bias)
    got = layer(x)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= 0.05 * expected.abs().max()
    other = torch.cat([x[:4], torch.randn(6, 24) * 10, x[4:]])  # other rows, far larger values among them
    for i in range(9):
        alone = layer(x[i: i + 1])[0]
        assert torch.equal(alone, got[i])
        assert torch.equal(alone, layer(other)[i if i < 4 else i + 6])


@functools.lru_cache(maxsize=None)
def _checkpoint(**overrides: object) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="nmt-int8-"))
    return make_checkpoint(folder / "model.pt", seed=3, **overrides)


def _translator(dtype: torch.dtype, beam: int, **overrides: object) -> Translator:
    trained = load_trained_model(_checkpoint(**overrides))
    decode = DecodeConfig(beam=beam, nbest=beam, max_len_a=1.0, max_len_b=4, batch_tokens=64)
    return Translator([trained], decode, CPU, dtype)


VARIANTS = [dict(), dict(cell="lstm", attention="general"), dict(tie_embeddings="decoder"),
            dict(attention="none", bridge="mean"), dict(dec_layers=2, enc_layers=2)]


@pytest.mark.parametrize("variant", range(len(VARIANTS)))
@pytest.mark.parametrize("beam", [1, 3])
def test_int8_translates_a_sentence_alone_as_inside_a_batch(variant: int, beam: int) -> None:
    translator = _translator(torch.qint8, beam, **VARIANTS[variant])
    sentences = synthetic_sentences(9, seed=variant)
    batched = translator.translate_lines(sentences)
    assert len(batched) == len(sentences)
    for sentence, together in zip(sentences, batched):
        (alone,) = translator.translate_lines([sentence])
        assert [h.tokens for h in alone] == [h.tokens for h in together]
        assert [h.score for h in alone] == [h.score for h in together]  # exact: integer accumulation


@pytest.mark.parametrize("variant", range(len(VARIANTS)))
def test_int8_step_log_probs_are_close_to_fp32(variant: int) -> None:
    """One decoder step of the quantized model against the fp32 one, same inputs."""
    fp32 = load_trained_model(_checkpoint(**VARIANTS[variant])).model
    int8 = load_trained_model(_checkpoint(**VARIANTS[variant])).model
    quantize_decoder(int8)
    quantize_decoder(int8)  # a second call changes nothing
    src = torch.tensor([[5, 9, 12, 7, 3], [8, 6, 3, 0, 0]])
    lengths = torch.tensor([5, 3])
    prev = torch.tensor([2, 2])
    with torch.inference_mode():
        outputs = []
        for model in (fp32, int8):
            enc, keys = model.encode(src, lengths)
            log_probs, _, _ = model.step(prev, model.decoder.init_state(enc), enc, keys)
            outputs.append(log_probs)
    assert (outputs[0] - outputs[1]).abs().max() < 0.1
    assert int8.int8 and not getattr(fp32, "int8", False)


def test_int8_is_for_cpus_and_the_command_line_takes_it(tmp_path: Path, run_cli) -> None:
    with pytest.raises(NMTError, match="dtype int8 is for decoding on CPUs"):
        resolve_dtype("int8", torch.device("cuda"))
    source = tmp_path / "in.txt"
    source.write_text("\n".join(synthetic_sentences(5, seed=1)) + "\n", encoding="utf-8")
    result = run_cli("translate", "-c", _checkpoint(), "-i", source, "--dtype", "int8", "--device", "cpu", "-q")
    assert result.code == 0, result.err
    expected = [h[0].text for h in _translator(torch.qint8, 3).with_options(nbest=1).translate_lines(
        source.read_text(encoding="utf-8").splitlines())]
    assert result.out.splitlines() == expected
