"""Which ops of a piece of torch code would make the host wait for a CUDA device, seen on
the CPU: each aten op is named as it dispatches (a TorchDispatchMode), and the ops whose
output size or value the host must read (item, nonzero, bincount, unique, a boolean mask's
index, ...) are kept. A CUDA graph cannot capture code that calls one. Python-level reads
of a CPU tensor (`tolist`) are not ops and are not seen."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

SYNCING = {"_local_scalar_dense", "nonzero", "bincount", "unique_dim", "_unique2",
           "unique_consecutive", "masked_select", "is_nonzero", "equal", "allclose",
           "argwhere", "_assert_async"}


class HostSyncs(TorchDispatchMode):
    """`with HostSyncs() as s: ...`, then `s.found`: the syncing ops called, in order."""

    def __init__(self):
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._overloadpacket.__name__
        if name in SYNCING or (name == "repeat_interleave" and func._overloadname == "Tensor"
                               and not (kwargs or {}).get("output_size")):
            self.found.append(name)
        elif name == "index" and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool
                                     for i in (args[1] if len(args) > 1 else ())):
            self.found.append("index (boolean mask)")
        return func(*args, **(kwargs or {}))
