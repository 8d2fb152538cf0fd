"""Per-request sampling parameters: plain, immutable data that crosses process boundaries."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class SamplingParams:
    """How one request picks its tokens and when it stops.

    temperature 0 is greedy. With a seed, the same request gives the same tokens whatever it is
    batched with (the sampler draws from a generator keyed by seed and output index).
    """

    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    """0: no top-k cut."""
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def to_dict(self) -> dict:
        # Not dataclasses.asdict: that deep-copies recursively and costs ~10 us, paid for every
        # sampling sequence of every step when a plan is encoded.
        d = {name: getattr(self, name) for name in _FIELDS}
        d["stop"], d["stop_token_ids"] = list(self.stop), list(self.stop_token_ids)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SamplingParams:
        d = dict(d)
        d["stop"] = tuple(d.get("stop", ()))
        d["stop_token_ids"] = tuple(d.get("stop_token_ids", ()))
        return cls(**d)


_FIELDS = tuple(f.name for f in fields(SamplingParams))
