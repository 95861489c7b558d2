"""nmt.model: shapes and masks, padding invariance, a copy task every cell x attention learns, tied embeddings,
scheduled sampling and the `select` projection."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.nn.utils.rnn import pad_sequence

from nmt.config import ModelConfig
from nmt.tokens import BOS, EOS, PAD
from nmt.errors import NMTError
from nmt.model.seq2seq import Seq2Seq, build_model

CELLS = ["gru", "lstm"]
ATTENTIONS = ["none", "bahdanau", "dot", "general"]
COMBINATIONS = list(itertools.product(CELLS, ATTENTIONS))
VOCAB = 12  # ids 0-3 are pad/unk/bos/eos, 4-11 are "words"


def model_config(**overrides: object) -> ModelConfig:
    base = dict(emb_dim=16, enc_hidden=16, dec_hidden=32, attention_dim=16, dropout=0.0, emb_dropout=0.0)
    base.update(overrides)
    return ModelConfig(**base)  # type: ignore[arg-type]


def make_model(seed: int = 0, **overrides: object) -> Seq2Seq:
    torch.manual_seed(seed)
    return build_model(model_config(**overrides), VOCAB, VOCAB, True)


def random_sequences(n: int, seed: int, min_len: int = 1, max_len: int = 7) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, max_len + 1, (n,), generator=g)
    return [torch.randint(4, VOCAB, (int(k),), generator=g) for k in lengths]


def batch_of(sources: list[torch.Tensor], targets: list[torch.Tensor]):
    """Padded (src, src_lengths, tgt_in, tgt_out) as the collate step builds them: src ends in EOS, the target
    is BOS y1..yn in and y1..yn EOS out."""
    eos, bos = torch.tensor([EOS]), torch.tensor([BOS])
    src = pad_sequence([torch.cat([s, eos]) for s in sources], batch_first=True, padding_value=PAD)
    lengths = torch.tensor([len(s) + 1 for s in sources])
    tgt_in = pad_sequence([torch.cat([bos, t]) for t in targets], batch_first=True, padding_value=PAD)
    tgt_out = pad_sequence([torch.cat([t, eos]) for t in targets], batch_first=True, padding_value=PAD)
    return src, lengths, tgt_in, tgt_out


def greedy(model: Seq2Seq, src: torch.Tensor, lengths: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Free-running decode through `Seq2Seq.step` (independent of nmt.search): tokens (batch, steps) and
    log-probabilities (batch, steps, vocab)."""
    enc, keys = model.encode(src, lengths)
    state = model.decoder.init_state(enc)
    prev = torch.full((src.size(0),), BOS)
    tokens, log_probs = [], []
    for _ in range(steps):
        lp, state, _ = model.step(prev, state, enc, keys)
        prev = lp.argmax(-1)
        tokens.append(prev)
        log_probs.append(lp)
    return torch.stack(tokens, 1), torch.stack(log_probs, 1)


# ----------------------------------------------------------------------------------------------- shapes, masks


@pytest.mark.parametrize("cell,attention", COMBINATIONS)
def test_shapes_and_masks(cell: str, attention: str):
    model = make_model(cell=cell, attention=attention, enc_layers=2, dec_layers=2).eval()
    sources, targets = random_sequences(5, seed=1), random_sequences(5, seed=2)
    src, lengths, tgt_in, tgt_out = batch_of(sources, targets)
    batch, src_len = src.shape

    enc, keys = model.encode(src, lengths)
    assert enc.states.shape == (batch, src_len, 2 * 16)
    assert enc.final.shape == (batch, 2 * 16)
    assert enc.mask.dtype == torch.bool
    assert torch.equal(enc.mask, src != PAD)
    assert torch.equal(enc.states[~enc.mask], torch.zeros_like(enc.states[~enc.mask]))  # padding stays zero

    state = model.decoder.init_state(enc)
    assert state.hidden.shape == (2, batch, 32)
    assert (state.cell is None) == (cell == "gru")
    log_probs, state, weights = model.step(torch.full((batch,), BOS), state, enc, keys)
    assert log_probs.shape == (batch, VOCAB)
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(batch), atol=1e-5)
    if attention == "none":
        assert weights is None
    else:
        assert weights.shape == (batch, src_len)
        assert torch.allclose(weights.sum(-1), torch.ones(batch), atol=1e-5)
        assert torch.all(weights[~enc.mask] == 0)  # attention never looks at padding

    logits = model(src, lengths, tgt_in)
    assert logits.shape == (*tgt_in.shape, VOCAB)


@pytest.mark.parametrize("tf_ratio", [1.0, 0.5])
def test_select_returns_exactly_the_real_positions(tf_ratio: float):
    model = make_model(attention="bahdanau").eval()
    src, lengths, tgt_in, tgt_out = batch_of(random_sequences(6, seed=3), random_sequences(6, seed=4))
    real = tgt_out != PAD
    torch.manual_seed(5)
    full = model(src, lengths, tgt_in, tf_ratio)
    torch.manual_seed(5)  # the same coin flips for scheduled sampling
    selected = model(src, lengths, tgt_in, tf_ratio, real)
    assert selected.shape == (int(real.sum()), VOCAB)
    assert torch.allclose(selected, full[real], atol=1e-6)


# ----------------------------------------------------------------------------------------------- padding


@pytest.mark.parametrize("bridge", ["zero", "final", "mean"])
@pytest.mark.parametrize("cell,attention", COMBINATIONS)
def test_padding_never_changes_a_sentence(cell: str, attention: str, bridge: str):
    """Encoder states and decoder logits of a sentence are the same alone as inside a padded batch."""
    model = make_model(cell=cell, attention=attention, bridge=bridge, enc_layers=2, dec_layers=2).eval()
    sources, targets = random_sequences(6, seed=6, max_len=9), random_sequences(6, seed=7, max_len=9)
    src, lengths, tgt_in, _ = batch_of(sources, targets)
    with torch.no_grad():
        enc, _ = model.encode(src, lengths)
        logits = model(src, lengths, tgt_in)
        for i, (s, t) in enumerate(zip(sources, targets)):
            src_i, len_i, tin_i, _ = batch_of([s], [t])
            alone, _ = model.encode(src_i, len_i)
            n, m = len(s) + 1, len(t) + 1
            assert torch.allclose(enc.states[i, :n], alone.states[0], atol=1e-5)
            assert torch.allclose(enc.final[i], alone.final[0], atol=1e-5)
            assert torch.allclose(logits[i, :m], model(src_i, len_i, tin_i)[0], atol=1e-5)


def encoder_dtypes() -> list:
    """fp32, and bf16 autocast where the CPU has native bf16 (elsewhere the LSTM runs in fp32 anyway)."""
    from nmt.precision import cpu_has_fast_bf16

    bf16 = pytest.param(torch.bfloat16, marks=pytest.mark.skipif(not cpu_has_fast_bf16(), reason="no native bf16"))
    return [torch.float32, bf16]


@pytest.mark.parametrize("dtype", encoder_dtypes(), ids=["fp32", "bf16"])
def test_decoding_encodes_a_sentence_bit_for_bit_the_same_in_any_batch(dtype: torch.dtype):
    """What makes a service's answer equal `nmt translate`'s line: the encoder, as decoding runs it on a CPU, gives a
    sentence the same states alone, among others, in another order and among sentences of its own length. (torch's
    own LSTM hands a batch of one length to oneDNN and any other batch to its step-by-step LSTM, which differ by
    1e-7 in fp32 and 1e-2 in bf16.)"""
    model = make_model(enc_layers=2, enc_hidden=32, emb_dim=24).eval()
    sources = random_sequences(9, seed=31, max_len=11) + [torch.tensor([5, 6, 7, 8]), torch.tensor([9, 8, 7, 6])]
    src, lengths, _, _ = batch_of(sources, sources)

    def encode(order: list[int]):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            s, n, _, _ = batch_of([sources[i] for i in order], [sources[i] for i in order])
            return model.encoder(s, n)

    everything = encode(list(range(len(sources))))
    backwards = encode(list(range(len(sources)))[::-1])
    same_length = encode([9, 10])
    assert torch.equal(same_length.states[1], everything.states[10, : int(lengths[10])])
    for i in range(len(sources)):
        n = int(lengths[i])
        alone = encode([i])
        assert torch.equal(everything.states[i, :n], alone.states[0]), i
        assert torch.equal(everything.final[i], alone.final[0]), i
        assert torch.equal(backwards.states[len(sources) - 1 - i, :n], alone.states[0]), i
        assert not everything.states[i, n:].any()  # padding stays zero


@pytest.mark.parametrize("layers", [1, 2])
def test_decoding_encodes_as_training_does(layers: int):
    """The decoding encoder (each direction a oneDNN call over 4 sentences at a time, the backward one over each
    sentence reversed) computes the packed LSTM that training runs, up to rounding: for 1 to 9 sentences, so that
    some calls are filled up with placeholder rows."""
    model = make_model(enc_layers=layers, enc_hidden=32, emb_dim=24)
    for count in (1, 3, 4, 9):
        src, lengths, _, _ = batch_of(random_sequences(count, seed=count, max_len=13), random_sequences(count, 0))
        with torch.no_grad():
            decoding = model.eval().encoder(src, lengths)
            training = model.train().encoder(src, lengths)  # no dropout in this model: only the path differs
        torch.testing.assert_close(decoding.states, training.states, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(decoding.final, training.final, atol=1e-5, rtol=1e-5)
        assert torch.equal(decoding.mask, training.mask)


# ----------------------------------------------------------------------------------------------- learning


@pytest.mark.parametrize("cell,attention", COMBINATIONS)
def test_copy_task_overfits(cell: str, attention: str):
    """20 short sequences, copied: teacher-forced argmax and free-running greedy decoding reproduce them all."""
    sequences = random_sequences(20, seed=8, min_len=3, max_len=6)
    src, lengths, tgt_in, tgt_out = batch_of(sequences, sequences)
    real = tgt_out != PAD
    model = make_model(cell=cell, attention=attention, enc_hidden=32, dec_hidden=64, attention_dim=32)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)

    def solved() -> bool:
        model.eval()
        with torch.no_grad():
            forced = model(src, lengths, tgt_in, 1.0, real).argmax(-1)
            decoded, _ = greedy(model, src, lengths, tgt_out.size(1))
        model.train()
        return bool(torch.equal(forced, tgt_out[real]) and torch.equal(decoded[real], tgt_out[real]))

    for step in range(300):
        loss = torch.nn.functional.cross_entropy(model(src, lengths, tgt_in, 1.0, real), tgt_out[real])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 10 == 9 and solved():
            break
    assert solved(), f"{cell}/{attention} did not learn to copy in 300 updates (loss {loss.item():.3f})"


# ----------------------------------------------------------------------------------------------- tying


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_decoder_tying_shares_one_matrix():
    untied = make_model(emb_dim=32, dec_hidden=32)
    tied = make_model(emb_dim=32, dec_hidden=32, tie_embeddings="decoder")
    assert tied.output.weight is tied.decoder.embedding.weight
    assert tied.output.weight.data_ptr() == tied.decoder.embedding.weight.data_ptr()
    assert tied.encoder.embedding.weight.data_ptr() != tied.decoder.embedding.weight.data_ptr()
    assert _n_params(untied) - _n_params(tied) == VOCAB * 32


def test_all_tying_shares_one_matrix_and_stays_tied_through_training_and_loading():
    model = make_model(tie_embeddings="all", dec_hidden=48)  # 48 != emb 16: a projection precedes the output
    shared = model.decoder.embedding.weight
    assert model.encoder.embedding.weight is shared and model.output.weight is shared
    src, lengths, tgt_in, tgt_out = batch_of(random_sequences(4, seed=9), random_sequences(4, seed=10))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    torch.nn.functional.cross_entropy(model(src, lengths, tgt_in).flatten(0, 1), tgt_out.flatten()).backward()
    optimizer.step()
    assert model.encoder.embedding.weight is model.output.weight

    fresh = make_model(seed=1, tie_embeddings="all", dec_hidden=48)
    fresh.load_state_dict(model.state_dict())
    assert fresh.encoder.embedding.weight is fresh.output.weight is fresh.decoder.embedding.weight
    assert torch.equal(fresh.output.weight, model.output.weight)


def test_scaled_embeddings_equal_an_unscaled_model_with_sqrt_dim_larger_embeddings():
    """`scale_embeddings` multiplies what the recurrent layers read, and nothing else: a scaled model computes
    what an unscaled one with the same weights and sqrt(emb_dim)-times larger input embeddings computes."""
    scaled = make_model(scale_embeddings=True).eval()
    unscaled = make_model(seed=1, scale_embeddings=False).eval()
    unscaled.load_state_dict(scaled.state_dict())
    src, lengths, tgt_in, _ = batch_of(random_sequences(3, seed=31), random_sequences(3, seed=32))
    assert not torch.allclose(scaled(src, lengths, tgt_in), unscaled(src, lengths, tgt_in))
    with torch.no_grad():
        for embedding in (unscaled.encoder.embedding, unscaled.decoder.embedding):
            embedding.weight.mul_(model_config().emb_dim ** 0.5)
    assert torch.allclose(scaled(src, lengths, tgt_in), unscaled(src, lengths, tgt_in), atol=1e-5)


@pytest.mark.parametrize("scale", [True, False])
def test_embeddings_start_at_the_output_layers_scale(scale: bool):
    """Embeddings start as N(0, 1/emb_dim); with scale_embeddings an untied output layer starts at the same
    scale (std 1/sqrt(its input size)), without it xavier's, as checkpoints from before the option had."""
    torch.manual_seed(3)
    big = build_model(model_config(emb_dim=64, dec_hidden=256, scale_embeddings=scale), 2000, 2000, True)
    embedding_std = big.encoder.embedding.weight[1:].std().item()
    assert abs(embedding_std - 64 ** -0.5) < 0.01
    output_std = big.output.weight.std().item()
    expected = 256 ** -0.5 if scale else (2 / (256 + 2000)) ** 0.5
    assert abs(output_std - expected) < 0.1 * expected
    assert big.encoder.emb_scale == big.decoder.emb_scale == (8.0 if scale else 1.0)


@pytest.mark.parametrize("cell,bridge", [("gru", "zero"), ("lstm", "zero"), ("gru", "mean")])
def test_without_attention_every_step_sees_the_source_summary(cell: str, bridge: str):
    """Cho et al. (2014): without attention the source summary is an input of every step, so even a decoder
    whose first state is zero translates from the source, and so does a step long after the first."""
    model = make_model(cell=cell, attention="none", bridge=bridge).eval()
    sources = random_sequences(2, seed=21, min_len=4)
    src, lengths, tgt_in, _ = batch_of(sources, random_sequences(2, seed=22, min_len=5, max_len=5))
    same_target = tgt_in[:1].expand(2, -1)  # both sentences get the first one's target prefix
    logits = model(src, lengths, same_target)  # (2, tgt_len, vocab)
    for step in (0, same_target.size(1) - 1):
        assert not torch.allclose(logits[0, step], logits[1, step], atol=1e-4)


def test_all_tying_needs_a_joint_vocabulary():
    with pytest.raises(NMTError, match="tie_embeddings"):
        build_model(model_config(tie_embeddings="all"), VOCAB, VOCAB + 1, False)


# ----------------------------------------------------------------------------------------------- teacher forcing


@pytest.mark.parametrize("cell,attention", [("gru", "bahdanau"), ("lstm", "general"), ("lstm", "none")])
def test_scheduled_sampling_that_always_picks_gold_equals_teacher_forcing(monkeypatch, cell: str, attention: str):
    """The step-by-step scheduled-sampling path, every coin saying 'gold', computes the same logits as the batched
    teacher-forced path (ratio 1)."""
    model = make_model(cell=cell, attention=attention).eval()
    src, lengths, tgt_in, _ = batch_of(random_sequences(5, seed=11), random_sequences(5, seed=12))
    forced = model(src, lengths, tgt_in, 1.0)
    monkeypatch.setattr(torch, "rand", lambda shape, **kw: torch.zeros(shape))
    sampled = model(src, lengths, tgt_in, 0.5)
    assert torch.allclose(sampled, forced, atol=1e-5)


@pytest.mark.parametrize("cell,attention", [("gru", "dot"), ("lstm", "bahdanau")])
def test_ratio_zero_feeds_the_model_its_own_argmax(cell: str, attention: str):
    model = make_model(cell=cell, attention=attention).eval()
    src, lengths, tgt_in, _ = batch_of(random_sequences(5, seed=13), random_sequences(5, seed=14))
    free = torch.log_softmax(model(src, lengths, tgt_in, 0.0), dim=-1)
    _, greedy_log_probs = greedy(model, src, lengths, tgt_in.size(1))
    assert torch.allclose(free, greedy_log_probs, atol=1e-5)


def test_scheduled_sampling_mixes_gold_and_predicted_tokens():
    """0 < ratio < 1 differs from both extremes (the model is random, so its argmax is rarely the gold token)."""
    model = make_model(attention="bahdanau").eval()
    src, lengths, tgt_in, _ = batch_of(random_sequences(8, seed=15, min_len=5), random_sequences(8, seed=16, min_len=5))
    torch.manual_seed(0)
    mixed = model(src, lengths, tgt_in, 0.5)
    assert not torch.allclose(mixed, model(src, lengths, tgt_in, 1.0))
    assert not torch.allclose(mixed, model(src, lengths, tgt_in, 0.0))


def test_without_native_bf16_the_encoder_lstm_runs_in_fp32_even_for_one_sentence(monkeypatch) -> None:
    """On an AVX2-only CPU oneDNN has no bf16 LSTM for a single sequence: `nmt translate --dtype bf16` of one
    line crashed. There the LSTM runs in fp32 (forced here, so that the test means the same on every CPU)."""
    import nmt.model.encoder as encoder_module

    monkeypatch.setattr(encoder_module, "cpu_has_fast_bf16", lambda: False)
    model = build_model(ModelConfig(emb_dim=16, enc_hidden=8, dec_hidden=16, attention_dim=8), 30, 30, True).eval()
    src, lengths = torch.tensor([[5, 6, 7, 3]]), torch.tensor([4])
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        enc = model.encoder(src, lengths)
    with torch.inference_mode():
        expected = model.encoder(src, lengths)
    assert enc.states.dtype == torch.float32
    torch.testing.assert_close(enc.states, expected.states)


@pytest.mark.parametrize("rows", [1, 5, 80])
def test_the_projection_in_column_blocks_equals_one_product(monkeypatch, rows: int) -> None:
    """A search's fp32 vocabulary projection on a CPU runs one product per column block (faster for few rows);
    blocks of 64 columns over a 1,000-word vocabulary (the last block short) give the whole product's logits."""
    import nmt.model.seq2seq as seq2seq_module

    model = build_model(ModelConfig(emb_dim=16, enc_hidden=8, dec_hidden=16, attention_dim=8), 30, 1000, False).eval()
    monkeypatch.setattr(seq2seq_module, "_BLOCK_ELEMENTS", 64 * model.output.in_features)
    projection = seq2seq_module.OutputProjection(model, None)
    output = torch.randn(rows, model.decoder.output_size)
    with torch.inference_mode():
        logits = projection(output, torch.full((rows, 1000), float("nan")))
        expected = model.output(model.pre_output(output) if model.pre_output is not None else output)
    assert len(projection._column_blocks()) == 16
    torch.testing.assert_close(logits, expected)


def test_the_column_blocks_are_kept_between_batches_until_the_weights_change() -> None:
    """The blocks are cut once per model, not once per batch; an in-place update of the weights (an optimizer
    step between two validations) makes the next batch cut them again."""
    from nmt.model.seq2seq import OutputProjection

    model = build_model(ModelConfig(emb_dim=16, enc_hidden=8, dec_hidden=16, attention_dim=8), 30, 1000, False).eval()
    output = torch.randn(3, model.decoder.output_size)
    out = torch.empty(3, 1000)
    with torch.no_grad():
        first = OutputProjection(model, None)
        first(output, out)
        second = OutputProjection(model, None)
        second(output, out)
        assert second._column_blocks() is first._column_blocks()
        model.output.weight.add_(1.0)
        logits = OutputProjection(model, None)(output, out)
        expected = model.output(model.pre_output(output) if model.pre_output is not None else output)
    torch.testing.assert_close(logits, expected)


def test_additive_scores_in_chunks_cut_to_each_chunk_s_length_equal_the_whole_term(monkeypatch) -> None:
    """Search's additive scores, computed a few sentences at a time and each chunk only as long as its longest
    source, equal training's one-piece formula at every unmasked position: chunks of at most ~600 elements
    here, so most hold two or three sentences and a long sentence is a chunk of its own."""
    import nmt.model.attention as attention_module

    monkeypatch.setattr(attention_module, "_CHUNK_ELEMENTS", 600)
    torch.manual_seed(0)
    attention = attention_module.AdditiveAttention(query_size=6, key_size=5, attention_dim=4)
    lengths = torch.tensor([3, 1, 9, 9, 2, 40, 5, 5, 5, 7])  # arrival order; 40 x beam 3 x dim 4 > 600
    keys = torch.randn(len(lengths), int(lengths.max()), 5)
    mask = torch.arange(keys.size(1)) < lengths.unsqueeze(1)
    query = torch.randn(len(lengths), 3, 6)
    with torch.no_grad():
        chunked = attention.scores(query, attention.prepare(keys), mask)
    with torch.enable_grad():
        whole = attention.scores(query, attention.prepare(keys), mask)
    positions = mask.unsqueeze(1).expand_as(whole)
    torch.testing.assert_close(chunked[positions], whole.detach()[positions], atol=1e-6, rtol=0)
    with torch.no_grad():  # no sentence left: no chunk, no buffer
        assert attention.scores(query[:0], attention.prepare(keys[:0]), mask[:0]).shape == (0, 3, keys.size(1))


@pytest.mark.parametrize("lengths", [[], [5], [1, 2, 3, 40, 4], [9, 9, 9, 9, 9, 9, 9], [30, 1, 1, 1, 30, 2]])
def test_attention_chunks_cover_every_sentence_once_within_the_budget(monkeypatch, lengths: list[int]) -> None:
    import nmt.model.attention as attention_module

    monkeypatch.setattr(attention_module, "_CHUNK_ELEMENTS", 100)
    chunks = attention_module._chunks(lengths, per_position=4)
    assert [i for start, end, _ in chunks for i in range(start, end)] == list(range(len(lengths)))
    for start, end, length in chunks:
        assert length == max(lengths[start:end])
        assert end - start == 1 or (end - start) * length * 4 <= 100
    # Greedy: a chunk ends only where the next sentence would not fit.
    for (start, end, length), _ in zip(chunks, chunks[1:]):
        assert (end + 1 - start) * max(length, lengths[end]) * 4 > 100
