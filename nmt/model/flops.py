"""FLOPs of a model, counted from its config: what a benchmark divides by a time to get a rate, and by the
machine's best matrix-product rate to get a fraction of peak.

Kept beside the model (as nanoGPT keeps `GPT.estimate_mfu` beside its model) so that the count cannot drift from
the shapes: `tests/test_flops.py` runs built models under torch's FLOP counter and checks every figure here.

Counted: 2 FLOPs per multiply-add of every matrix product of the forward pass (`F.linear`, `bmm`, the encoder
LSTM's products), real tokens only. Not counted: biases, element-wise work (gates, `tanh`, softmax, dropout),
embedding lookups, the loss, and padding (the batching's cost, not the model's). Training counts the backward
pass as twice the forward (Kaplan et al., 2020).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from nmt.config import ModelConfig

GATES = {"gru": 3, "lstm": 4}  # gate blocks in a recurrent cell's weight matrices
ATTENTIONS = ("none", "bahdanau", "dot", "general")


def _check(cfg: ModelConfig) -> None:
    """Refuse what this module does not know how to count, rather than count it wrong."""
    if cfg.cell not in GATES:
        raise ValueError(f"FLOPs of a {cfg.cell!r} decoder cell are not counted (known: {', '.join(GATES)})")
    if cfg.attention not in ATTENTIONS:
        raise ValueError(f"FLOPs of {cfg.attention!r} attention are not counted (known: {', '.join(ATTENTIONS)})")


@dataclass(frozen=True)
class ModelFlops:
    """Forward FLOPs of a model built by `nmt.model.seq2seq.build_model(cfg, ...)`, in the parts a run scales by
    its own counts (source tokens, sentences, decoder steps, attended source positions)."""

    encoder_per_source_token: int  # the bidirectional LSTM, all layers, both directions
    keys_per_source_token: int  # the attention keys, projected once per batch
    per_sentence: int  # the bridge; without attention, the source summary's share of layer 0's input
    per_step: int  # one decoder step (a target token, a hypothesis token) apart from its source positions
    per_step_source_position: int  # one decoder step's attention scores and context, per real source position

    @classmethod
    def of(cls, cfg: ModelConfig, tgt_vocab: int) -> ModelFlops:
        """The counts for `cfg` with a target vocabulary of `tgt_vocab` (the source vocabulary costs lookups only)."""
        _check(cfg)
        enc_out = 2 * cfg.enc_hidden
        lstm = sum(2 * GATES["lstm"] * cfg.enc_hidden * ((cfg.emb_dim if k == 0 else enc_out) + cfg.enc_hidden)
                   for k in range(cfg.enc_layers))
        return cls(
            encoder_per_source_token=2 * lstm,
            keys_per_source_token=2 * enc_out * _attention_key_size(cfg),
            per_sentence=2 * _per_sentence_macs(cfg),
            per_step=2 * _per_step_macs(cfg, tgt_vocab),
            per_step_source_position=2 * _per_position_macs(cfg),
        )

    def decoder_step(self, src_len: float) -> float:
        """One decoder step attending over `src_len` real source positions."""
        return float(self.per_step + src_len * self.per_step_source_position)

    def forward(self, src_len: float, tgt_len: float) -> float:
        """One sentence pair, teacher-forced: lengths as the model sees them (`nmt.tokens.with_eos`)."""
        return (src_len * (self.encoder_per_source_token + self.keys_per_source_token) + self.per_sentence
                + tgt_len * self.decoder_step(src_len))

    def training_per_target_token(self, src_lengths: Sequence[int], tgt_lengths: Sequence[int]) -> float:
        """Forward and backward (3 x forward) over a corpus's pairs, per real target token:
        3 * sum_i forward(src_i, tgt_i) / sum_i tgt_i."""
        forward = sum(self.forward(s, t) for s, t in zip(src_lengths, tgt_lengths))
        return 3.0 * forward / max(sum(tgt_lengths), 1)

    def search(self, sentences: int, src_tokens: int, rows: int, row_src_positions: int) -> float:
        """A search: every sentence encoded once (`src_tokens` counting EOS), one decoder step per hypothesis
        token computed. `rows` and `row_src_positions` are what `nmt.search.SearchStats` counts: hypothesis
        tokens, and the real source positions they attended to, summed. One model; an ensemble costs the sum."""
        return float(src_tokens * (self.encoder_per_source_token + self.keys_per_source_token)
                     + sentences * self.per_sentence + rows * self.per_step
                     + row_src_positions * self.per_step_source_position)


def _attention_key_size(cfg: ModelConfig) -> int:
    """Output size of the key projection (0: none). Luong's `dot` projects only when the sizes differ."""
    enc_out = 2 * cfg.enc_hidden
    if cfg.attention == "bahdanau":
        return cfg.attention_dim
    if cfg.attention == "general" or (cfg.attention == "dot" and enc_out != cfg.dec_hidden):
        return cfg.dec_hidden
    return 0


def _per_sentence_macs(cfg: ModelConfig) -> int:
    enc_out = 2 * cfg.enc_hidden
    bridge = enc_out * cfg.dec_layers * cfg.dec_hidden if cfg.bridge != "zero" else 0
    context = enc_out * GATES[cfg.cell] * cfg.dec_hidden if cfg.attention == "none" else 0
    return bridge + context


def _per_step_macs(cfg: ModelConfig, tgt_vocab: int) -> int:
    """layer 0's input (embedding, fed attentional vector), upper layers' inputs, every layer's recurrent
    product, the attention query (additive only), the attentional layer, the output projection."""
    gated = GATES[cfg.cell] * cfg.dec_hidden
    attends = cfg.attention != "none"
    feed = cfg.dec_hidden if cfg.input_feeding and attends else 0
    rnn = gated * (cfg.emb_dim + feed) + gated * cfg.dec_hidden * (2 * cfg.dec_layers - 1)
    query = cfg.dec_hidden * cfg.attention_dim if cfg.attention == "bahdanau" else 0
    attentional = (cfg.dec_hidden + 2 * cfg.enc_hidden) * cfg.dec_hidden if attends else 0
    tied = cfg.tie_embeddings != "none"
    pre_output = cfg.dec_hidden * cfg.emb_dim if tied and cfg.dec_hidden != cfg.emb_dim else 0
    output = (cfg.emb_dim if tied else cfg.dec_hidden) * tgt_vocab
    return rnn + query + attentional + pre_output + output


def _per_position_macs(cfg: ModelConfig) -> int:
    """Scores (additive: v's product over the attention size; multiplicative: the query against the projected
    key) and the context (the weights against the encoder states)."""
    if cfg.attention == "none":
        return 0
    enc_out = 2 * cfg.enc_hidden
    score = cfg.attention_dim if cfg.attention == "bahdanau" else (_attention_key_size(cfg) or enc_out)
    return score + enc_out
