"""Tokenizers the engine and the router share: a protocol and the byte-level one.

No torch here (the router imports it). The reference model (profiles/models/tiny-moe.yaml,
vocab_size 256) uses `ByteTokenizer`: a token is one byte of the UTF-8 text. Real tokenizers
come with real checkpoints (a later issue) behind the same protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable


@runtime_checkable
class Tokenizer(Protocol):
    """Text <-> token ids. `decode` of a sequence that ends inside a multi-byte character
    ends with U+FFFD; the engine's incremental detokenizer holds such text back."""

    @property
    def eos_token_id(self) -> int | None: ...

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        """Every end-of-sequence id of the model: each one ends a generation."""
        ...

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, token_ids: Sequence[int]) -> str: ...


_REPLACEMENT = "\ufffd".encode()


class ByteTokenizer:
    """One token per UTF-8 byte: ids 0..255. The end-of-sequence token is byte 0 (NUL),
    which text practically never contains. A shape-only model with a larger vocabulary (a
    real model's shape with random weights, for measurements) samples ids past 255: each
    decodes to U+FFFD, as an undecodable byte does."""

    EOS = 0

    @property
    def eos_token_id(self) -> int:
        return self.EOS

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        return (self.EOS,)

    @property
    def vocab_size(self) -> int:
        return 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, token_ids: Sequence[int]) -> str:
        try:
            data = bytes(token_ids)
        except (ValueError, TypeError):
            bad = next((t for t in token_ids if not (isinstance(t, int) and t >= 0)), None)
            if bad is not None:
                raise ValueError(f"token id {bad!r} is not a token id (ByteTokenizer's ids "
                                 "are 0..255)") from None
            data = b"".join(bytes((t,)) if t < 256 else _REPLACEMENT for t in token_ids)
        return data.decode("utf-8", errors="replace")
