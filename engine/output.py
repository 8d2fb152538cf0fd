"""From sampled tokens to what a client sees: incremental text and the stop rules.

Per request: an incremental detokenizer that emits only text that cannot change any more
(a token that ends inside a multi-byte character waits for the rest), and the stop rules:
max_tokens -> "length"; an id of stop_token_ids, or one of the model's end-of-sequence ids
(every id of generation_config.json's eos_token_id) unless ignore_eos -> "stop" (its text is
not shown); a stop string -> "stop", the text cut before
it. Text that might be the start of a stop string is held back until it is resolved.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .request import FinishReason, Request
from .tokenizer import Tokenizer

REPLACEMENT = "\ufffd"
CONTEXT_TOKENS = 4
"""Prompt tokens decoded in front of the first output token: tokenizers whose text depends on
the previous token (a leading space) then render the first output token right."""
MAX_HELD_TOKENS = 8
"""Tokens an unfinished character may wait for; past that the bytes are not a character
(stray UTF-8 continuation bytes) and go out as U+FFFD rather than hold the text forever."""


@dataclass
class RequestOutput:
    """What one step (or an abort) produced for one request; counts are totals so far."""

    rid: str
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finished: bool = False
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    timings: dict[str, float] | None = None
    """On the final output: Request.timings (queue_s, prefill_s, decode_s)."""

    def to_message(self) -> dict:
        """The protocol's "output" message (engine/protocol.py)."""
        message = {"op": "output", "rid": self.rid, "token_ids": self.token_ids,
                   "text": self.text, "finished": self.finished,
                   "finish_reason": self.finish_reason, "prompt_tokens": self.prompt_tokens,
                   "cached_tokens": self.cached_tokens,
                   "completion_tokens": self.completion_tokens}
        if self.timings is not None:
            message["timings"] = self.timings
        return message


class IncrementalDetokenizer:
    """Decodes a growing token list a few tokens at a time, emitting only settled text.

    It decodes a window from `prefix` (tokens already shown, kept as context) to the end and
    emits what the window adds past the text of prefix..read; text ending in U+FFFD (an
    unfinished character) waits for the next token, or for `flush` at the end.
    """

    def __init__(self, tokenizer: Tokenizer, prompt_token_ids: Sequence[int] = ()):
        self.tokenizer = tokenizer
        context = list(prompt_token_ids[-CONTEXT_TOKENS:])
        if context and tokenizer.decode(context).endswith(REPLACEMENT):
            context = []  # a prompt cut inside a character gives no clean context
        self.ids: list[int] = context
        self.prefix = 0
        self.read = len(context)

    def add(self, token_id: int) -> str:
        """Take one token; return the text that became settled (maybe "")."""
        self.ids.append(token_id)
        return self._advance(final=False)

    def flush(self) -> str:
        """Everything not yet emitted, unfinished characters as U+FFFD (the request ended)."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        ids = self.ids
        if self.read == len(ids):
            return ""
        shown = self.tokenizer.decode(ids[self.prefix:self.read])
        text = self.tokenizer.decode(ids[self.prefix:])
        if not final and (len(text) <= len(shown) or (
                text.endswith(REPLACEMENT) and len(ids) - self.read < MAX_HELD_TOKENS)):
            return ""
        delta = text[len(shown):]
        self.prefix, self.read = self.read, len(ids)
        if len(ids) > 64:  # keep the list short: only the window is ever decoded again
            del ids[:self.prefix]
            self.read -= self.prefix
            self.prefix = 0
        return delta


class OutputProcessor:
    """One request's detokenizer and stop rules; `on_token` is called once per new token."""

    def __init__(self, req: Request, tokenizer: Tokenizer, eos_token_ids: frozenset[int]):
        self.req = req
        sampling = req.sampling
        self.stop_ids = frozenset(sampling.stop_token_ids)
        if not sampling.ignore_eos:
            self.stop_ids |= eos_token_ids
        self.stops = tuple(s for s in sampling.stop if s)
        self.detok = IncrementalDetokenizer(tokenizer, req.prompt_token_ids)
        self.text = ""
        """All settled text (cut before a stop string once one is found)."""
        self.emitted = 0
        """Characters of `text` already sent."""
        self._stop_at: int | None = None
        """Where the first stop string began, once one is found."""

    def on_token(self, token_id: int) -> tuple[str, FinishReason | None]:
        """Apply one new token (already appended to the request); return the text to send
        now and the finish reason if the request ends with it."""
        reason: FinishReason | None = None
        if token_id in self.stop_ids:
            self._append(self.detok.flush())  # the stop token's own text is not shown
            reason = "stop"
        else:
            self._append(self.detok.add(token_id))
            req = self.req
            if self._stop_at is None and req.num_output_tokens >= req.sampling.max_tokens:
                self._append(self.detok.flush())
                reason = "length"
        if self._stop_at is not None:
            reason = "stop"
        return self._emit(final=reason is not None), reason

    def finish(self) -> str:
        """Text still held back when the request ends early (abort): sent as is."""
        self._append(self.detok.flush())
        return self._emit(final=True)

    def _append(self, delta: str) -> None:
        if not delta or self._stop_at is not None:
            return
        start = len(self.text)
        self.text += delta
        found = -1
        for s in self.stops:
            i = self.text.find(s, max(0, start - len(s) + 1))
            if i >= 0 and (found < 0 or i < found):
                found = i
        if found >= 0:
            self._stop_at = found
            self.text = self.text[:found]

    def _held(self) -> int:
        """Length of the longest tail of the unsent text that begins some stop string."""
        text = self.text
        unsent = len(text) - self.emitted
        if not unsent:
            return 0
        last = text[-1]
        held = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, unsent), held, -1):
                if s[k - 1] == last and text.endswith(s[:k]):
                    held = k
                    break
        return held

    def _emit(self, final: bool) -> str:
        end = len(self.text) if final or self._stop_at is not None else (
            len(self.text) - self._held())
        out = self.text[self.emitted:end]
        self.emitted = end
        return out
