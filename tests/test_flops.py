"""The FLOP count (nmt/model/flops.py) against the models it counts: built models run under torch's FLOP counter,
and the encoder LSTM (which the counter does not see) against its weight matrices' shapes."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from nmt.config import DecodeConfig, ModelConfig
from nmt.model.flops import ModelFlops
from nmt.model.seq2seq import build_model
from nmt.search import Search
from nmt.tokens import EOS

VOCAB = 37
# Sizes that differ from one another, so that a count using the wrong size cannot come out right by chance.
BASE = ModelConfig(emb_dim=6, enc_hidden=5, dec_hidden=12, attention_dim=7, dropout=0.0, emb_dropout=0.0)

CONFIGS = [
    dataclasses.replace(BASE, cell=cell, attention=attention, tie_embeddings=tie, input_feeding=feed)
    for cell, attention, (tie, feed) in itertools.product(("gru", "lstm"), ("none", "bahdanau", "dot", "general"),
                                                          (("none", True), ("all", False)))
] + [
    dataclasses.replace(BASE, enc_layers=2, dec_layers=3, bridge="mean"),
    dataclasses.replace(BASE, cell="lstm", dec_layers=2, bridge="zero", attention="none"),
    dataclasses.replace(BASE, enc_hidden=6, attention="dot"),  # keys already the query's size: no projection
    dataclasses.replace(BASE, emb_dim=12, tie_embeddings="decoder"),  # tied without the pre-output projection
]


def _model(cfg: ModelConfig) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(cfg, VOCAB, VOCAB, joint_vocab=True).eval()


def _source(sentences: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sentences of one length (no padding, whose work the count leaves out), each ending in EOS."""
    src = torch.randint(4, VOCAB, (sentences, length), generator=torch.Generator().manual_seed(length))
    src[:, -1] = EOS
    return src, torch.full((sentences,), length)


def _counted(run) -> int:
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops()


def _counted_lstm(model: torch.nn.Module, flops: ModelFlops, src: torch.Tensor, src_lengths: torch.Tensor) -> int:
    """What the counter sees of the encoder LSTM: all of it or nothing, depending on the kernel torch picks
    (the LSTM's count is checked against its weights' shapes in any case)."""
    counted = _counted(lambda: model.encoder(src, src_lengths))
    assert counted in (0, int(src_lengths.sum()) * flops.encoder_per_source_token)
    return counted


def _lstm_flops_from_shapes(model: torch.nn.Module) -> int:
    """Each of the encoder LSTM's weight matrices multiplies every source token once (per direction)."""
    return 2 * sum(p.numel() for name, p in model.encoder.rnn.named_parameters() if name.startswith("weight"))


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.cell}-{c.attention}-tie_{c.tie_embeddings}-"
                         f"feed_{c.input_feeding}-{c.enc_layers}x{c.dec_layers}-{c.bridge}-e{c.emb_dim}h{c.enc_hidden}")
def test_the_count_is_what_the_built_model_computes(cfg):
    model, flops = _model(cfg), ModelFlops.of(cfg, VOCAB)
    assert flops.encoder_per_source_token == _lstm_flops_from_shapes(model)

    src, src_lengths = _source(1, 9)
    counted = _counted(lambda: model(src, src_lengths, torch.randint(4, VOCAB, (1, 5))))
    lstm = _counted_lstm(model, flops, src, src_lengths)
    assert counted - lstm == flops.forward(9, 5) - 9 * flops.encoder_per_source_token

    longer = _counted(lambda: model(src, src_lengths, torch.randint(4, VOCAB, (1, 6))))
    assert longer - counted == flops.decoder_step(9)  # one more target token is one more decoder step


@pytest.mark.parametrize("beam", [1, 3])
@pytest.mark.parametrize("cfg", [dataclasses.replace(BASE, attention="none"), BASE,
                                 dataclasses.replace(BASE, cell="lstm", attention="general", enc_layers=2)],
                         ids=lambda c: f"{c.cell}-{c.attention}")
def test_the_search_count_follows_the_search_stats(cfg, beam):
    model, flops = _model(cfg), ModelFlops.of(cfg, VOCAB)
    search = Search(DecodeConfig(beam=beam, max_len_a=1.0, max_len_b=3))
    src, src_lengths = _source(2, 7)
    counted = _counted(lambda: search.generate([model], src, src_lengths))
    lstm = _counted_lstm(model, flops, src, src_lengths)
    stats = search.stats
    assert stats.rows > 0 and stats.row_src_positions == 7 * stats.rows
    assert counted - lstm == (flops.search(2, 14, stats.rows, stats.row_src_positions)
                              - 14 * flops.encoder_per_source_token)


def test_the_training_count_is_three_forwards_per_target_token():
    flops = ModelFlops.of(BASE, VOCAB)
    src, tgt = [4, 9, 2], [5, 3, 8]
    total = sum(flops.forward(s, t) for s, t in zip(src, tgt))
    assert flops.training_per_target_token(src, tgt) == pytest.approx(3 * total / sum(tgt))


def test_the_benchmark_model_matches_the_formulas_docs_benchmarks_cites():
    """docs/BENCHMARKS.md writes the bench model's counts out; they must stay the count's."""
    bench = ModelConfig(emb_dim=256, enc_hidden=256, dec_hidden=512, cell="gru", attention="bahdanau",
                        attention_dim=512, input_feeding=True, bridge="final", tie_embeddings="none")
    flops = ModelFlops.of(bench, 8000)
    for src_len in (0, 13):
        assert flops.decoder_step(src_len) == 2 * (3 * 512 * (256 + 512) + 3 * 512 * 512 + 512 * 512
                                                   + src_len * (512 + 512) + (512 + 512) * 512 + 512 * 8000)
    assert flops.encoder_per_source_token + flops.keys_per_source_token == 2 * (2 * 4 * 256 * (256 + 256)
                                                                                + 512 * 512)
    assert flops.per_sentence == 2 * 512 * 512


@pytest.mark.parametrize("change", [{"cell": "rnn"}, {"attention": "multihead"}])
def test_what_is_not_counted_is_refused(change):
    with pytest.raises(ValueError, match="not counted"):
        ModelFlops.of(dataclasses.replace(BASE, **change), VOCAB)
