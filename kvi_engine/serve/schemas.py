"""Request bodies of the HTTP API (pydantic, strict about unknown fields: a typo is a 400 naming it, not a silent
default). OpenAI fields the engine does not implement are accepted only at their neutral value."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kvi_engine.serve.request import SamplingParams


class KVIOptions(BaseModel):
    """The ``"kvi"`` extension object: explicit capsules, or the query pipeline's retrieval for this request."""
    model_config = ConfigDict(extra="forbid")
    capsule_ids: list[int] | None = None
    retrieve: bool = False
    attribution: bool = True
    method: str = "KVI"

    @model_validator(mode="after")
    def _one_source(self):
        if self.capsule_ids is not None and self.retrieve:
            raise ValueError("give capsule_ids or retrieve, not both")
        return self


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: None = None
    kvi: KVIOptions | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("at most 4 non-empty stop sequences")
        return stops

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, v):
        if v != 0.0:
            raise ValueError("penalties are not supported (only 0)")
        return v

    def sampling(self, default_max_tokens: int) -> SamplingParams:
        return SamplingParams(max_tokens=self.max_tokens or default_max_tokens, temperature=self.temperature,
                              top_p=self.top_p, top_k=self.top_k, seed=self.seed, stop=tuple(self.stop or ()),
                              n=self.n)


class CompletionRequest(_Sampling):
    prompt: str = Field(min_length=1)
    echo: Literal[False] = False


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _alias(self):
        if self.max_completion_tokens is not None and self.max_tokens is None:
            self.max_tokens = self.max_completion_tokens
        return self


class AnswerRequest(BaseModel):
    """``POST /v1/answer``: the whole pipeline for one question."""
    model_config = ConfigDict(extra="forbid")
    question: str = Field(min_length=1)
    method: str = "KVI"
    max_tokens: int = Field(32, ge=1)
    stream: bool = False
    attribution: bool = True
