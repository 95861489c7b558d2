"""The service's requests and answers as pydantic models: one definition gives the validation, the 422 errors
and the OpenAPI schema at /docs.

Requests are strict: a field of the wrong type ("beam": "5", "alignments": "yes") or an unknown field is
refused, never coerced or ignored, so a typo cannot silently decode with the defaults.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class TranslateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    text: str | list[str] = Field(description="a sentence, or a list of them (one per line of a file)")
    model: str | None = Field(None, description="a name from /v1/models (default: the only or first one)")
    beam: int | None = Field(None, description="beam size; 1 is greedy (default: the checkpoint's)")
    nbest: int | None = Field(None, description="hypotheses per sentence, best first (default 1); widens the "
                              "beam when no beam is given")
    alignments: bool = Field(False, description="also return each sentence's attention over its source")
    constraints: list[str] | list[list[str] | None] | None = Field(
        None, description="target phrases each translation must contain: a list of phrases for a single text, a "
        "list (one entry per sentence, null for none) for a list of texts")
    prefix: str | list[str | None] | None = Field(
        None, description="text each translation must start with: one for a single text, one per sentence (null "
        "for none) for a list")
    glossary: str | None = Field(None, description="a glossary the server loaded (--glossary NAME=FILE): its "
                                 "entries whose source term a sentence holds become that sentence's constraints")

    @field_validator("text")
    @classmethod
    def _unicode(cls, text: str | list[str]) -> str | list[str]:
        """JSON may escape a lone surrogate ("\\ud800"), which is no character: refuse it here, before the
        subword model meets it."""
        for i, sentence in enumerate([text] if isinstance(text, str) else text):
            try:
                sentence.encode("utf-8")
            except UnicodeEncodeError as err:
                where = "" if isinstance(text, str) else f"line {i}: "
                raise ValueError(f"{where}not valid Unicode (a lone surrogate at character {err.start})") \
                    from None
        return text


class Hypothesis(BaseModel):
    text: str
    score: float = Field(description="the ranking score: log-probability normalised for length")
    log_prob: float = Field(description="the sum of the token log-probabilities, EOS included")


class Alignment(BaseModel):
    """The record `nmt translate --alignments` writes: one attention row per target piece (the last is EOS's),
    one column per source piece."""

    index: int
    source: list[str]
    target: list[str]
    attention: list[list[float]]


class SentenceTranslation(BaseModel):
    text: str = Field(description="the best translation; empty for an empty line")
    score: float
    unmet: list[str] | None = Field(None, description="constraints the best translation lacks (no room for them "
                                    "within the maximum output length); absent when it lacks none")
    nbest: list[Hypothesis] = Field(description="the `nbest` best translations, best first")
    alignment: Alignment | None = None


class TranslateResponse(BaseModel):
    model: str
    translations: list[SentenceTranslation] = Field(description="one per input sentence, in input order")


class ModelInfo(BaseModel):
    name: str
    source_language: str
    target_language: str
    checkpoints: list[str] = Field(description="file names; several for an ensemble")
    parameters: int
    attention: bool = Field(description="whether alignments can be asked for")
    decode: dict[str, Any] = Field(description="the decoding options a request gets unless it sets beam or "
                                   "nbest: the checkpoint's, batch_tokens set to the server's --max-batch-tokens")
    dtype: str
    device: str


class ModelsResponse(BaseModel):
    models: list[ModelInfo]
    limits: dict[str, int] = Field(description="max_sentences, max_body_bytes, max_line_subwords")
    glossaries: list[str] = Field(default_factory=list, description="names a request's `glossary` may take")


class ErrorBody(BaseModel):
    status: int
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody
