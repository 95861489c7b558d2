"""The whole translation model: embeddings, encoder, decoder and the vocabulary projection.

Scale of the embeddings. Every embedding matrix starts as N(0, 1/emb_dim), the scale an output layer needs
(a tied embedding is one), and with `scale_embeddings` its lookups are multiplied by sqrt(emb_dim) (Vaswani et
al., 2017), so that the recurrent layers receive inputs of unit variance. Without that factor their inputs are
16 times smaller than the weights expect at emb_dim 256: the encoder's states start near zero, attention has
nothing to read, and the model spends its first epoch as a language model of the target. Measured on the bench
model (Multi30k de-en, untied, dropout 0.2, Adam 1e-3, 4k-token batches), dev after 100 updates: perplexity
215 and BLEU 0.1 unscaled, 35 and 8.9 scaled; tied: 91 and 3.5 unscaled, 31 and 11.2 scaled.
"""

from __future__ import annotations

import torch
from torch import nn

from nmt.config import ModelConfig
from nmt.tokens import PAD
from nmt.errors import NMTError
from nmt.model.attention import build_attention
from nmt.model.decoder import Decoder, DecoderState, StepWeights, compute_dtype
from nmt.model.encoder import Encoder, EncoderOutput


class Seq2Seq(nn.Module):
    def __init__(self, cfg: ModelConfig, src_vocab: int, tgt_vocab: int, joint_vocab: bool):
        super().__init__()
        if cfg.tie_embeddings == "all" and not joint_vocab:
            raise NMTError("config key model.tie_embeddings: 'all' needs a joint vocabulary (data.subword.joint)")
        self.src_vocab, self.tgt_vocab = src_vocab, tgt_vocab
        tgt_embedding = nn.Embedding(tgt_vocab, cfg.emb_dim, padding_idx=PAD)
        src_embedding = tgt_embedding if cfg.tie_embeddings == "all" else nn.Embedding(
            src_vocab, cfg.emb_dim, padding_idx=PAD)
        emb_scale = cfg.emb_dim ** 0.5 if cfg.scale_embeddings else 1.0
        self.encoder = Encoder(src_embedding, cfg.enc_hidden, cfg.enc_layers, cfg.dropout, cfg.emb_dropout, emb_scale)
        attention = build_attention(cfg.attention, cfg.dec_hidden, self.encoder.output_size, cfg.attention_dim)
        self.decoder = Decoder(tgt_embedding, cfg.cell, cfg.dec_hidden, cfg.dec_layers, self.encoder.output_size,
                               attention, cfg.input_feeding, cfg.bridge, cfg.dropout, cfg.emb_dropout, emb_scale)
        tied = cfg.tie_embeddings != "none"
        # Tying needs the output layer's input to have the embedding size; project down when it does not.
        needs_proj = tied and self.decoder.output_size != cfg.emb_dim
        self.pre_output = nn.Linear(self.decoder.output_size, cfg.emb_dim) if needs_proj else None
        self.output = nn.Linear(cfg.emb_dim if tied else self.decoder.output_size, tgt_vocab)
        if tied:
            self.output.weight = tgt_embedding.weight
        self._init_parameters(cfg.scale_embeddings)

    def _init_parameters(self, scale_embeddings: bool) -> None:
        for name, param in self.named_parameters():
            if "embedding" in name:
                nn.init.normal_(param, std=param.size(-1) ** -0.5)
                with torch.no_grad():
                    param[PAD].zero_()
            elif name == "output.weight" and scale_embeddings:
                # An untied output layer at a tied one's scale: logits of about unit variance at the start
                # (xavier's std here is 3x smaller: dev perplexity 55 instead of 35 after 100 updates).
                nn.init.normal_(param, std=param.size(-1) ** -0.5)
            elif param.dim() > 1:
                nn.init.xavier_uniform_(param)
            else:
                nn.init.zeros_(param)

    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor) -> tuple[EncoderOutput, torch.Tensor | None]:
        """Encoder states and the attention keys projected once for the whole decode."""
        enc = self.encoder(src, src_lengths)
        keys = self.decoder.attention.prepare(enc.states) if self.decoder.attention is not None else None
        return enc, keys

    def logits(self, outputs: torch.Tensor) -> torch.Tensor:
        """(..., output_size) -> (..., tgt_vocab)."""
        if self.pre_output is not None:
            outputs = self.pre_output(outputs)
        return self.output(outputs)

    def forward(self, src: torch.Tensor, src_lengths: torch.Tensor, tgt_in: torch.Tensor,
                tf_ratio: float = 1.0, select: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced (or scheduled-sampling) decode: (batch, tgt_len) inputs -> (batch, tgt_len, vocab).

        With `select` (a (batch, tgt_len) bool mask, True on real target tokens) only those positions are
        projected onto the vocabulary, giving (n_selected, vocab): padding costs no projection FLOPs.
        """
        enc, keys = self.encode(src, src_lengths)
        state = self.decoder.init_state(enc)
        weights = self.decoder.step_weights(src.device)
        steps = tgt_in.size(1)
        if tf_ratio >= 1.0:
            gates_in = self.decoder.embed(tgt_in, weights)  # (batch, tgt_len, gates * hidden)
            outputs = []
            # unbind, not gates_in[:, t]: its backward is one stack, where indexing gives every step's gradient
            # a zero-filled buffer of the whole (batch, tgt_len, gates * hidden) tensor, summed step by step.
            for step_in in gates_in.unbind(1):
                out, state, _ = self.decoder.step_from_input(step_in, state, enc, keys, weights)
                outputs.append(out)
            stacked = torch.stack(outputs, dim=1)  # (batch, tgt_len, output_size)
            # One large vocabulary projection over all steps: most of the model's FLOPs.
            return self.logits(stacked[select] if select is not None else stacked)
        logits = []
        prev = tgt_in[:, 0]
        for t in range(steps):
            out, state, _ = self.decoder.step(prev, state, enc, keys, weights)
            step_logits = self.logits(out)  # (batch, vocab)
            logits.append(step_logits)
            if t + 1 < steps:
                gold = tgt_in[:, t + 1]
                use_gold = torch.rand(gold.shape, device=gold.device) < tf_ratio
                prev = torch.where(use_gold, gold, step_logits.argmax(-1))
        stacked_logits = torch.stack(logits, dim=1)
        return stacked_logits[select] if select is not None else stacked_logits

    def step(self, prev: torch.Tensor, state: DecoderState, enc: EncoderOutput, keys: torch.Tensor | None,
             weights: StepWeights | None = None) -> tuple[torch.Tensor, DecoderState, torch.Tensor | None]:
        """One search step: (batch,) previous tokens -> (batch, vocab) log-probabilities, state, attention.

        `weights` from `self.decoder.step_weights(device)`, prepared once per batch, saves re-casting them
        at every step under autocast.
        """
        logits, state, attention = self.step_logits(prev, state, enc, keys, weights)
        return torch.log_softmax(logits, dim=-1), state, attention

    def step_logits(self, prev: torch.Tensor, state: DecoderState, enc: EncoderOutput, keys: torch.Tensor | None,
                    weights: StepWeights | None = None, projection: OutputProjection | None = None,
                    out: torch.Tensor | None = None) -> tuple[torch.Tensor, DecoderState, torch.Tensor | None]:
        """`step` before normalising: (batch, vocab) float32 logits, through `projection` (the whole vocabulary
        or a shortlist's columns) and into `out` when it is given."""
        output, state, attention = self.decoder.step(prev, state, enc, keys, weights)
        if projection is None:
            return self.logits(output).float(), state, attention
        return projection(output, out), state, attention


_BLOCK_ELEMENTS = 1 << 17  # a column block of the output weights: 512 KB in fp32, half an L2 cache


class OutputProjection:
    """A search's vocabulary projection, prepared once per batch: over every target subword, or over a
    shortlist's columns only (their rows of the output weights picked once, not at every step).

    Called with `out`, a reused (rows, columns) float32 buffer, it writes there instead of allocating tens of MB
    at every step (fp32 without autocast; an int8 layer allocates its own).
    """

    def __init__(self, model: Seq2Seq, columns: torch.Tensor | None):
        from nmt.quantize import Int8Linear, Int8Module

        self.pre_output = model.pre_output
        layer = model.output
        self.int8: Int8Linear | None = None
        if isinstance(layer, Int8Module):
            self.int8 = layer.int8 if columns is None else layer.subset(columns)
            return
        self.weight, self.bias = layer.weight, layer.bias
        self._blocks: list[tuple[int, torch.Tensor, torch.Tensor]] | None = None
        self._model = model if columns is None else None  # keeps the whole vocabulary's blocks between batches
        self.rounding: torch.dtype | None = None  # under autocast with a shortlist: the dtype operands round to
        if columns is not None:
            self.weight, self.bias = self.weight.index_select(0, columns), self.bias.index_select(0, columns)
            # Under bf16/fp16 autocast a product's result for one row varies with the number of columns, and a
            # shortlist's columns vary from batch to batch: a sentence would translate differently alone and in
            # a batch. So the (few) shortlist columns are an fp32 product of operands rounded to that dtype, once
            # for the weights, at every step for the decoder's output.
            self.rounding = compute_dtype(columns.device)
            if self.rounding is not None:
                self.weight = self.weight.to(self.rounding).float()
                self.bias = self.bias.to(self.rounding).float()

    def __call__(self, output: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """output (rows, output_size) -> (rows, columns) float32."""
        if self.pre_output is not None:
            output = self.pre_output(output)
        if self.int8 is not None:
            return self.int8(output)
        if self.rounding is not None:
            with torch.autocast(output.device.type, enabled=False):
                return nn.functional.linear(output.to(self.rounding).float(), self.weight, self.bias)
        if out is None or torch.is_autocast_enabled(output.device.type):
            return nn.functional.linear(output, self.weight, self.bias).float()
        if output.device.type != "cpu" or self.weight.dtype != torch.float32:
            return torch.addmm(self.bias, output, self.weight.t(), out=out)
        for start, weight, bias in self._column_blocks():
            torch.addmm(bias, output, weight, out=out[:, start:start + weight.size(1)])
        return out

    def _column_blocks(self) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
        """The transposed output weights cut into contiguous (output_size, ~L2-sized) column blocks, made on
        the first call (a search that never scores, such as a stream's joining, never copies them) and kept on
        the model for the next batches while its weights stay as they are, at the price of one more copy of the
        output weights in memory. Cutting them took 4-6 ms (demo model, one AVX2-only thread): greedy search of
        one sentence at a time took 47.3 ms a sentence with the blocks kept against 51.2 with them cut for each
        (medians over three rounds of 40 test2016 sentences; beam 5: 107.6 against 107.9).

        On a CPU one product per block is faster than one over the whole vocabulary where a step has few rows,
        and gives the same bits (each logit is the same dot product). The demo model (8,000 x 256 output,
        blocks of 512 columns), two 16-sentence streams on one AVX2 thread each: 79.5 sentences/s against 73.6
        over four rounds in alternating order, and 67.6 against 63.2 over four more, faster in every round
        (docs/BENCHMARKS.md).
        """
        if self._blocks is not None:
            return self._blocks
        # Kept only for the model's own weights (a shortlist's columns, picked for one batch, are inference
        # tensors without a version). An optimizer's in-place update bumps the version: validation during
        # training cuts them again.
        model = self._model if self._model is not None and not self.weight.is_inference() else None
        key = None if model is None else (self.weight.data_ptr(), self.weight._version)
        kept = getattr(model, "_output_column_blocks", None)
        if kept is not None and kept[0] == key:
            self._blocks = kept[1]
            return self._blocks
        columns = max(64, (_BLOCK_ELEMENTS // self.weight.size(1)) // 64 * 64)
        self._blocks = [(start, self.weight[start:start + columns].t().contiguous(),
                         self.bias[start:start + columns]) for start in range(0, self.weight.size(0), columns)]
        if model is not None:
            model._output_column_blocks = (key, self._blocks)
        return self._blocks


def build_model(cfg: ModelConfig, src_vocab: int, tgt_vocab: int, joint_vocab: bool) -> Seq2Seq:
    return Seq2Seq(cfg, src_vocab, tgt_vocab, joint_vocab)
