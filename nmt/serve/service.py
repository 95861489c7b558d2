"""The service without HTTP: the models it serves under their names, each with its batching worker, and the
translation of one request from its validated body to its answer.

Everything a client can get wrong is a `ServiceError` with the HTTP status and a one-line message that names the
limit or the option, so `nmt.serve.app` only turns it into JSON. Decoding options go through
`Translator.with_options`, so they are checked and named exactly as in the Python API.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from nmt.constraints import Target
from nmt.errors import NMTError
from nmt.glossary import Glossary, with_glossary
from nmt.precision import dtype_name
from nmt.serve.batcher import Batcher, BatchObserver, QueueFull, Result, Stopped
from nmt.serve.schema import Alignment, Hypothesis, ModelInfo, SentenceTranslation, TranslateRequest, \
    TranslateResponse
from nmt.serve.settings import ServeSettings
from nmt.tokens import MAX_LINE_SUBWORDS
from nmt.translate import alignment_record
from nmt.translator import Source, Translation, Translator

MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class ServiceError(Exception):
    """A request the service refuses: its HTTP status, one line saying why, and what else the client needs."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None, **extra: object):
        super().__init__(message)
        self.status, self.message, self.headers, self.extra = status, message, headers or {}, extra


@dataclass
class ServedModel:
    name: str
    translator: Translator  # with the checkpoint's decoding options, batch_tokens set to the batch budget
    batcher: Batcher

    def __post_init__(self) -> None:
        # Checking a request's options took 0.4-0.8 ms (measured), as much as parsing and encoding a short
        # request: the translators of the last few option sets are kept (a refused set raises, and is not).
        self.with_options = functools.lru_cache(maxsize=64)(self._with_options)

    def _with_options(self, beam: int | None, nbest: int | None) -> Translator:
        return self.translator.with_options(beam=beam, nbest=nbest)

    def info(self) -> ModelInfo:
        data = self.translator.members[0].config.data
        return ModelInfo(
            name=self.name, source_language=data.src_lang, target_language=data.tgt_lang,
            checkpoints=[os.path.basename(m.path) for m in self.translator.members],
            parameters=sum(p.numel() for model in self.translator.models for p in model.parameters()),
            attention=self.translator.has_attention, decode=dataclasses.asdict(self.translator.decode),
            dtype=dtype_name(self.translator.dtype), device=str(self.translator.device))


def parse_model_spec(spec: str) -> tuple[str | None, str]:
    """`NAME=CKPT` or `CKPT` (a file whose name holds "=" is taken whole when it exists)."""
    name, sep, path = spec.partition("=")
    if not sep or os.path.exists(spec):
        return None, spec
    if not MODEL_NAME.fullmatch(name):
        raise NMTError(f"-c {spec}: a model name is letters, digits, '.', '_' or '-' (at most 64), got {name!r}")
    return name, path


def load_models(specs: Sequence[str], settings: ServeSettings, device: str, dtype: str,
                observer: BatchObserver | None = None) -> list[ServedModel]:
    """Load each checkpoint once, through the safe loader, under its name (default: its language pair)."""
    models: list[ServedModel] = []
    for spec in specs:
        name, path = parse_model_spec(spec)
        translator = Translator.load(path, device, dtype, batch_tokens=settings.limits.max_batch_tokens)
        data = translator.members[0].config.data
        name = name or f"{data.src_lang}-{data.tgt_lang}"
        if any(m.name == name for m in models):
            raise NMTError(f"two models are named {name}: give each its own name with -c NAME=CKPT")
        models.append(ServedModel(name, translator, Batcher(name, settings.limits, observer)))
    return models


class Service:
    """The models by name and the request-to-answer path; `start` and `stop` run their workers."""

    def __init__(self, models: list[ServedModel], settings: ServeSettings,
                 glossaries: dict[str, Glossary] | None = None):
        if not models:
            raise NMTError("no model to serve: give at least one -c CKPT")
        self.models = {m.name: m for m in models}
        self.settings = settings
        self.glossaries = glossaries or {}
        for name, glossary in self.glossaries.items():  # a term no model can write fails at start-up, not later
            for model in models:
                model.translator.check_glossary(glossary)

    def start(self) -> None:
        for model in self.models.values():
            model.batcher.start()

    def stop(self) -> None:
        """Translate what is queued, then end the workers."""
        for model in self.models.values():
            model.batcher.stop()

    def model(self, name: str | None) -> ServedModel:
        if name is None:
            return next(iter(self.models.values()))
        if name not in self.models:
            raise ServiceError(404, f"unknown model {name!r}; this server has {', '.join(self.models)}",
                               models=list(self.models))
        return self.models[name]

    async def translate(self, request: TranslateRequest) -> TranslateResponse:
        served = self.model(request.model)
        sentences = [request.text] if isinstance(request.text, str) else request.text
        if len(sentences) > self.settings.max_sentences:
            raise ServiceError(413, f"{len(sentences)} sentences, more than the {self.settings.max_sentences} a "
                               "request may have (max_sentences)", limit=self.settings.max_sentences)
        try:
            translator = served.with_options(request.beam, request.nbest)
        except NMTError as err:
            raise ServiceError(422, str(err)) from None
        if request.alignments and not translator.has_attention:
            raise ServiceError(422, f"alignments need a model with attention; {served.name} has none")
        sources = encode_checked(translator, sentences)
        targets = self._targets(request, translator, sentences)
        results = await self._search(served.batcher, translator, sources, request.alignments, targets)
        return TranslateResponse(model=served.name, translations=[
            sentence_answer(i, hyps, translator, request.alignments) for i, hyps in enumerate(results)])

    def _targets(self, request: TranslateRequest, translator: Translator, sentences: list[str]
                 ) -> list[Target | None] | None:
        """Each sentence's constraints (given, and from the glossary asked for) and prefix as target subwords;
        any mistake in them is a 422 naming the line, as `nmt translate` names it."""
        single = isinstance(request.text, str)
        constraints, prefixes = request.constraints, request.prefix
        if single:
            if constraints is not None and not all(isinstance(c, str) for c in constraints):
                raise ServiceError(422, "constraints: for a single text, a list of phrases")
            constraints = None if constraints is None else [constraints]
            prefixes = None if prefixes is None else [prefixes]
        elif isinstance(prefixes, str):
            raise ServiceError(422, "prefix: for a list of texts, a list with one entry per sentence")
        glossary = None
        if request.glossary is not None:
            if request.glossary not in self.glossaries:
                known = ", ".join(self.glossaries) or "none"
                raise ServiceError(404, f"unknown glossary {request.glossary!r}; this server has {known}",
                                   glossaries=list(self.glossaries))
            glossary = self.glossaries[request.glossary]
        try:
            return translator.encode_targets(len(sentences), with_glossary(sentences, constraints, glossary),
                                             prefixes, first_line=0)
        except NMTError as err:
            raise ServiceError(422, str(err)) from None

    async def _search(self, batcher: Batcher, translator: Translator, sources: list[Source],
                      with_attention: bool, targets: list[Target | None] | None = None) -> Result:
        if not sources:
            return []
        try:
            future = batcher.submit(translator, sources, with_attention, targets)
        except QueueFull as err:
            raise ServiceError(503, f"the server is busy: {err}; retry later", {"Retry-After": "1"}) from None
        except Stopped:
            raise ServiceError(503, "the server is shutting down", {"Retry-After": "5"}) from None
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.settings.timeout)
        except asyncio.TimeoutError:
            batcher.cancel(future)
            raise ServiceError(504, f"not translated within the server's timeout of {self.settings.timeout:g} s",
                               limit=self.settings.timeout) from None


def encode_checked(translator: Translator, sentences: list[str]) -> list[Source]:
    """Subword ids per sentence, None for an empty one, as `Translator.encode` gives them; a line over the
    subword limit is refused here, where `nmt translate` would cut it, since a client can split it itself."""
    # One sentence at a time: SentencePiece encodes a list on a pool of threads it starts for each call, which
    # took milliseconds per request on cores busy with a search (a single string takes microseconds).
    encoded = [translator.src_spm.sp.encode(sentence, out_type=int) for sentence in sentences]
    for i, ids in enumerate(encoded):
        if len(ids) > MAX_LINE_SUBWORDS:
            raise ServiceError(413, f"line {i}: {len(ids)} subwords, more than the {MAX_LINE_SUBWORDS} a line may "
                               "have (max_line_subwords)", limit=MAX_LINE_SUBWORDS)
    return [ids if ids else None for ids in encoded]


def sentence_answer(index: int, hyps: list[Translation], translator: Translator, with_alignment: bool
                    ) -> SentenceTranslation:
    """One sentence's answer: its best translation, its n-best list and, when asked, the best one's attention
    as `nmt translate --alignments` writes it."""
    best = hyps[0]
    alignment = Alignment(**alignment_record(index, best, translator.src_spm, translator.tgt_spm)) \
        if with_alignment else None
    return SentenceTranslation(text=best.text, score=best.score, alignment=alignment, unmet=list(best.unmet) or None, nbest=[
        Hypothesis(text=h.text, score=h.score, log_prob=h.log_prob) for h in hyps])
