"""Which (source EP rank, token) rows each local expert processed, observed from outside ep.py.

The spy wraps this rank's EP group collectives (instance attributes shadowing the methods) to
see the dispatch as it arrived on the wire, and hooks every local expert module to see the
rows it was really called with. Per MoE call it records
`{"layer", "sent", "experts": {expert: [(src, token), ...]}, "inputs_match"}`: `inputs_match`
says each expert's inputs were exactly the arrived rows carrying its id, in arrival order.
"""

from __future__ import annotations

import torch

from pypto_serving.executor.ep import ExpertParallelMoE, unpack_rows


class ExpertSpy:
    def __init__(self, moes: list[ExpertParallelMoE]):
        self.records: list[dict] = []
        self._moes = moes
        self._undo: list = []
        self._call: dict | None = None
        if not moes:
            return
        ep = moes[0].ep
        for name in ("all_to_all", "all_gather"):
            self._wrap(ep, name)
        for moe in moes:
            self._undo.append(moe.register_forward_pre_hook(self._begin).remove)
            self._undo.append(moe.register_forward_hook(self._end).remove)
            for e, expert in moe.local_experts.items():
                self._undo.append(expert.register_forward_pre_hook(self._expert_input(e)).remove)

    def close(self) -> None:
        """Restore the group's collectives and drop the hooks."""
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()

    def _wrap(self, group, name: str) -> None:
        real = getattr(group, name)

        def spied(t, *args, **kwargs):
            out = real(t, *args, **kwargs)
            if self._call is not None:
                self._call["wire"].append((name, t, out, args))
            return out

        setattr(group, name, spied)
        self._undo.append(lambda: delattr(group, name))

    def _expert_input(self, expert: int):
        def hook(_module, inputs):
            if self._call is not None:
                self._call["inputs"].setdefault(expert, []).append(inputs[0].detach().clone())
        return hook

    def _begin(self, moe, inputs) -> None:
        self._call = {"moe": moe, "wire": [], "inputs": {}, "hidden": inputs[0].shape[1],
                      "dtype": inputs[0].dtype}

    def _end(self, moe, _inputs, _output) -> None:
        call, self._call = self._call, None
        if moe.backend == "allgather_reducescatter":
            sent, rows, ids, pairs = self._gathered(moe, call)
        else:
            sent, rows, ids, pairs = self._dispatched(moe, call)
        experts, match = {}, True
        for e in moe.local_ids:
            picked = [i for i, row_ids in enumerate(ids) if e in row_ids]
            want = rows[picked]
            got = torch.cat(call["inputs"].get(e, [want[:0]]))
            match = match and torch.equal(want, got)
            experts[e] = [pairs[i] for i in picked]
        self.records.append({"layer": moe.layer_id, "sent": sent, "experts": experts,
                             "inputs_match": match})

    @staticmethod
    def _dispatched(moe, call):
        """pypto_default: the split-size exchange, then the rows packed with (expert, token)
        as they arrived here, each from the member whose split it came in."""
        (_, sizes, _, _), (_, _, packed, args) = call["wire"][:2]
        sent = int(sizes.sum()) // moe.top_k
        recv_counts = list(args[1])
        rows, meta = unpack_rows(packed, (call["dtype"], (call["hidden"],)), (torch.long, (2,)))
        src = [s for s, n in enumerate(recv_counts) for _ in range(n)]
        ids = [[int(e)] for e in meta[:, 0]]
        return sent, rows, ids, [(src[i], int(meta[i, 1])) for i in range(len(src))]

    @staticmethod
    def _gathered(moe, call):
        """allgather_reducescatter: every member's count, then everyone's rows, ids and
        weights padded to the largest count; row r came from member r // width."""
        (_, mine, counts, _), (_, _, packed, _) = call["wire"][:2]
        width = max(int(c) for c in counts)
        k = moe.top_k
        rows, ids, _w = unpack_rows(packed, (call["dtype"], (call["hidden"],)),
                                    (torch.long, (k,)), (call["dtype"], (k,)))
        pairs = [divmod(r, width) for r in range(rows.shape[0])]
        return int(mine), rows, [row.tolist() for row in ids], pairs
