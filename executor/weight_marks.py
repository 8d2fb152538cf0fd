"""Whether a tensor derived from some layers' weights is still theirs.

A fused projection (model.FusedProjection) and a layer's stacked experts
(grouped_experts.StackedExperts) make one tensor of several nn.Linear weights and leave the
layers holding views of it. A .to(), a TP reshard, a checkpoint load or a new Parameter
replaces a layer's weight; the derived tensor must then be made again.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


class WeightMarks:
    """The parameter (object and storage) each layer held when the derived tensor was made."""

    def __init__(self) -> None:
        self._marks: list[tuple[nn.Parameter, int]] = []

    def take(self, linears: Sequence[nn.Linear]) -> None:
        self._marks = [(lin.weight, lin.weight.data_ptr()) for lin in linears]

    def current(self, linears: Sequence[nn.Linear]) -> bool:
        """Each layer still holds the marked parameter on the marked storage (cheap: it runs
        at every call of an eager step)."""
        return bool(self._marks) and all(
            lin._parameters["weight"] is w and w.data_ptr() == ptr
            for lin, (w, ptr) in zip(linears, self._marks, strict=True))
