"""The torch sampler of the last PP stage: greedy, temperature, top-k, top-p, per-request seed.

Greedy rows are an exact argmax. A random row draws one uniform number u and takes the
token where the cumulative probability (in vocabulary order, after temperature, top-k and
top-p) first exceeds u. With a seed, u comes from a generator keyed by (seed, output index)
alone, so a request gets the same tokens whatever it is batched with; without one, from the
sampler's own generator.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Protocol

import torch


class SamplingLike(Protocol):
    """What the sampler reads of a request's parameters (engine's SamplingParams)."""

    temperature: float
    top_p: float
    top_k: int
    seed: int | None


def seeded_uniform(seed: int, output_index: int) -> float:
    """The uniform draw of a seeded request's `output_index`-th token: a function of the two
    numbers only (BLAKE2b of them seeds a CPU generator)."""
    digest = hashlib.blake2b(f"{seed}:{output_index}".encode(), digest_size=8).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))
    return float(torch.rand((), generator=gen, dtype=torch.float64))


class Sampler:
    """Picks one token per row of last-token logits."""

    def __init__(self, seed: int | None = None):
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)

    def sample(self, logits: torch.Tensor, params: Sequence[SamplingLike | None],
               output_indices: Sequence[int] | None = None,
               greedy: list[int] | None = None) -> list[int]:
        """logits [rows, vocab]; `params[i]` None or temperature 0 is greedy for row i;
        `greedy`: the rows' argmax where the step computed it already (a decode graph)."""
        if logits.shape[0] != len(params):
            raise ValueError(f"{logits.shape[0]} rows of logits but {len(params)} parameters")
        random_rows = [i for i, p in enumerate(params) if p is not None and p.temperature > 0]
        if not random_rows:
            return logits.argmax(-1).tolist() if greedy is None else greedy
        tokens = (logits.argmax(-1) if greedy is None
                  else torch.tensor(greedy, device=logits.device))
        indices = output_indices or [0] * len(params)
        rows = torch.tensor(random_rows, device=logits.device)
        picked = [params[i] for i in random_rows]
        probs = filtered_probs(logits[rows].float(), picked)
        draws = torch.tensor(
            [seeded_uniform(p.seed, indices[i]) if p.seed is not None
             else float(torch.rand((), generator=self.generator, dtype=torch.float64))
             for i, p in zip(random_rows, picked, strict=True)],
            dtype=torch.float64).to(logits.device)
        cdf = probs.double().cumsum(-1)
        choice = torch.searchsorted(cdf, (draws * cdf[:, -1]).unsqueeze(1)).squeeze(1)
        choice = choice.clamp_(max=logits.shape[1] - 1)
        tokens[rows] = choice
        return tokens.tolist()


def filtered_probs(logits: torch.Tensor, params: Sequence[SamplingLike]) -> torch.Tensor:
    """Softmax of logits / temperature with everything outside top-k and the top-p nucleus
    set to zero (per row). The top-p nucleus is the fewest most likely tokens whose
    probability reaches top_p (the first token always stays)."""
    temps = torch.tensor([p.temperature for p in params], device=logits.device)
    scaled = logits / temps[:, None]
    vocab = logits.shape[1]
    top_k = [p.top_k if 0 < p.top_k < vocab else vocab for p in params]
    if any(k < vocab for k in top_k):
        ks = torch.tensor(top_k, device=logits.device)
        sorted_desc = scaled.sort(-1, descending=True).values
        kth = sorted_desc.gather(1, (ks - 1)[:, None])
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = scaled.softmax(-1)
    top_p = torch.tensor([p.top_p for p in params], device=logits.device, dtype=probs.dtype)
    if bool((top_p < 1.0).any()):
        sorted_p, order = probs.sort(-1, descending=True)
        before = sorted_p.cumsum(-1) - sorted_p          # mass of the more likely tokens
        drop_sorted = before >= top_p[:, None]
        drop_sorted[:, 0] = False
        drop = torch.zeros_like(drop_sorted).scatter_(1, order, drop_sorted)
        probs = probs.masked_fill(drop, 0.0)
    return probs
