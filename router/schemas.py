"""Request bodies of the OpenAI routes (pydantic, strict types) and their sampling parameters.

Types are strict (a string is not a number, a number is not a bool), bounds are checked here,
and what the engine cannot do (n > 1, logprobs, tools, penalties) is refused by name rather
than silently ignored. Limits that depend on the replica (the context length) are checked by
the app once the prompt is tokenized.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from ..engine.sampling_params import SamplingParams
from .errors import bad_request

MAX_TOKENS_LIMIT = 1 << 20
"""Above this max_tokens is refused outright (the context check refuses smaller ones)."""

_STRICT = ConfigDict(strict=True, extra="ignore")

TokenId = Annotated[StrictInt, Field(ge=0)]


class StreamOptions(BaseModel):
    model_config = _STRICT
    include_usage: bool = False
    """Send a last chunk with the request's usage (and `usage: null` on the others)."""


class _Sampling(BaseModel):
    """Fields shared by both routes."""

    model_config = _STRICT

    model: StrictStr
    temperature: float | None = Field(None, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0.0, le=1.0, allow_inf_nan=False)
    top_k: int | None = Field(None, ge=-1)
    """vLLM's extension: -1 or 0 for no top-k cut."""
    seed: int | None = Field(None, ge=-(1 << 63), lt=1 << 63)
    stop: StrictStr | list[StrictStr] | None = None
    stop_token_ids: list[TokenId] | None = None
    ignore_eos: bool = False
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0, allow_inf_nan=False)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0, allow_inf_nan=False)
    user: StrictStr | None = None

    def check_supported(self) -> None:
        """Refuse, by name, what the engine cannot do (rather than ignore it)."""
        if self.n != 1:
            raise bad_request(f"n: only 1 choice per request is supported (got {self.n})",
                              param="n", code="unsupported")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise bad_request(f"{name}: penalties are not supported; leave it 0",
                                  param=name, code="unsupported")

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def sampling(self, max_tokens: int) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or ())
        top_k = self.top_k or 0
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=0 if top_k < 0 else top_k,
            seed=self.seed,
            stop=tuple(s for s in stop if s),
            stop_token_ids=tuple(self.stop_token_ids or ()),
            ignore_eos=self.ignore_eos,
        )


class CompletionRequest(_Sampling):
    """POST /v1/completions."""

    prompt: StrictStr | list[TokenId] | list[StrictStr] | list[list[TokenId]]
    max_tokens: int | None = Field(16, ge=1, le=MAX_TOKENS_LIMIT)
    echo: bool = False
    logprobs: int | None = Field(None, ge=0)
    best_of: int | None = Field(None, ge=1)
    suffix: StrictStr | None = None

    def check_supported(self) -> None:
        super().check_supported()
        for name, default in (("echo", False), ("logprobs", None), ("suffix", None)):
            if getattr(self, name) != default:
                raise bad_request(f"{name}: not supported; leave it out", param=name,
                                  code="unsupported")
        if self.best_of not in (None, 1):
            raise bad_request("best_of: only 1 is supported", param="best_of",
                              code="unsupported")

    def single_prompt(self) -> str | list[int]:
        """The one prompt of the request (a batch of several is refused, naming `prompt`)."""
        p = self.prompt
        if isinstance(p, str):
            return p
        if not p:
            raise bad_request("prompt: must not be empty", param="prompt")
        if isinstance(p[0], int):
            return p  # type: ignore[return-value]
        if len(p) != 1:
            raise bad_request(f"prompt: a batch of {len(p)} prompts is not supported; send one "
                              "prompt per request", param="prompt")
        return p[0]  # type: ignore[return-value]


class TextPart(BaseModel):
    model_config = _STRICT
    type: Literal["text"]
    text: StrictStr


class ChatMessage(BaseModel):
    model_config = _STRICT
    role: Literal["system", "developer", "user", "assistant"]
    content: StrictStr | list[TextPart] | None = None
    name: StrictStr | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_Sampling):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    logprobs: bool = False
    tools: list[dict] | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.logprobs:
            raise bad_request("logprobs: not supported; leave it out", param="logprobs",
                              code="unsupported")
        if self.tools:
            raise bad_request("tools: tool calls are not supported", param="tools",
                              code="unsupported")

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None \
            else self.max_tokens
