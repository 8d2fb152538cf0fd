"""Errors the engine raises with user-facing messages, defined where the rules live."""

from __future__ import annotations


class RequestRejected(ValueError):
    """A request the engine can never serve (too long for the model or for the whole KV pool),
    or a malformed one; the message names the limit and how to fit under it."""

    def __init__(self, rid: str, message: str, code: int = 400):
        self.rid = rid
        self.code = code
        super().__init__(message)
