"""The data of one check-comm step: what each rank sends, the answer it must get back, and
which peer each part of that answer came from.

Values are small integers in float32 that depend on the sending rank, the element index
and the step (never ones or zeros), so every rank knows every other rank's data, sums are
exact, and a wrong element can be traced to the part, and so the peer, it came from.
Each op is called through the executor's GroupCoordinator, exactly as serving calls it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..core.comm_check import CheckStep, element_count, uneven_splits
from .comm import GroupCoordinator


def pattern(rank: int, count: int, salt: int, device: torch.device) -> torch.Tensor:
    """Rank `rank`'s data: ((131 rank + 7 i + 17 salt) mod 509) + 1, exact in float32."""
    i = torch.arange(count, dtype=torch.int64, device=device)
    return ((rank * 131 + i * 7 + salt * 17) % 509 + 1).to(torch.float32)


@dataclass
class OpCase:
    """One rank's side of one step: `fresh()` gives the buffer for the next call (a copy of
    the pristine input where the op works in place), `call(buf)` runs the op and returns
    what this rank must check (None: nothing arrives here), `expected` is the right answer
    and `sources` maps parts of it to the global rank that sent them ((rank, start, stop);
    empty where the parts are summed and no single sender can be named)."""

    call: Callable[[torch.Tensor], torch.Tensor | None]
    send: torch.Tensor
    expected: torch.Tensor | None
    nbytes: int
    count: int
    sources: list[tuple[int, int, int]] = field(default_factory=list)
    in_place: bool = False
    send_parts: list[int] = field(default_factory=list)  # first element of each part sent
    _work: torch.Tensor | None = None

    def fresh(self) -> torch.Tensor:
        if not self.in_place:
            return self.send
        if self._work is None:
            self._work = self.send.clone()
        else:
            self._work.copy_(self.send)
        return self._work

    def corrupt(self) -> None:
        """Damage one element of every part this rank sends (an injected fault)."""
        if self.send.numel():
            idx = torch.tensor(self.send_parts or [0], device=self.send.device)
            self.send[idx] = -self.send[idx]

    def check(self, out: torch.Tensor | None) -> tuple[int, dict[str, int]]:
        """Wrong elements of `out`, and how many came from each sending rank."""
        if self.expected is None or out is None:
            return 0, {}
        bad = out.reshape(-1) != self.expected
        wrong = int(bad.sum().item())
        if not wrong or not self.sources:
            return wrong, {}
        by_source: dict[str, int] = {}
        for src, start, stop in self.sources:
            n = int(bad[start:stop].sum().item())
            if n:
                by_source[str(src)] = by_source.get(str(src), 0) + n
        return wrong, by_source


def _parts(counts: list[int]) -> list[tuple[int, int]]:
    out, start = [], 0
    for c in counts:
        out.append((start, start + c))
        start += c
    return out


def make_case(step: CheckStep, group: GroupCoordinator, members: tuple[int, ...],
              rank: int) -> OpCase:
    """This rank's side of `step` on `group` (`members`: the ranks taking part)."""
    dev, salt, n = group.device, step.index, len(members)
    me = members.index(rank)
    count = element_count(step.op, step.size_bytes, n)

    def data(r: int, c: int = count) -> torch.Tensor:
        return pattern(r, c, salt, dev)

    def total() -> torch.Tensor:  # the sum over members, one buffer at a time
        out = data(members[0])
        for r in members[1:]:
            out += data(r)
        return out

    if step.op == "all_reduce":
        expected = total()
        return OpCase(group.all_reduce, data(rank), expected, count * 4, count, in_place=True)
    if step.op == "all_gather":
        per = count // n
        expected = torch.cat([data(r, per) for r in members])
        sources = [(r, j * per, (j + 1) * per) for j, r in enumerate(members)]
        return OpCase(group.all_gather, data(rank, per), expected, count * 4, count, sources)
    if step.op == "reduce_scatter":
        per = count // n
        expected = total()[me * per:(me + 1) * per].clone()
        return OpCase(group.reduce_scatter, data(rank), expected, count * 4, count,
                      send_parts=[j * per for j in range(n)])
    if step.op == "all_to_all" and step.variant == "even":
        per = count // n
        expected = torch.cat([data(r)[me * per:(me + 1) * per] for r in members])
        sources = [(r, j * per, (j + 1) * per) for j, r in enumerate(members)]
        return OpCase(group.all_to_all, data(rank), expected, count * 4, count, sources,
                      send_parts=[j * per for j in range(n)])
    if step.op == "all_to_all":
        splits = [uneven_splits(count, n, j) for j in range(n)]  # splits[sender][receiver]
        mine = splits[me]
        recv = [splits[j][me] for j in range(n)]
        pieces, sources, start = [], [], 0
        for j, r in enumerate(members):
            lo = sum(splits[j][:me])
            pieces.append(data(r, sum(splits[j]))[lo:lo + recv[j]])
            sources.append((r, start, start + recv[j]))
            start += recv[j]

        def call(t: torch.Tensor) -> torch.Tensor:
            return group.all_to_all(t, mine, recv)

        return OpCase(call, data(rank, sum(mine)), torch.cat(pieces), sum(mine) * 4,
                      sum(mine), sources, send_parts=[a for a, _ in _parts(mine)])
    if step.op == "broadcast":
        root = members[0]  # the group's first member (broadcast's src=0: its position)
        # A non-root buffer starts as something the answer never is, so a broadcast that
        # delivered nothing is caught too.
        start = data(root) if rank == root else -data(rank)
        return OpCase(lambda t: group.broadcast(t, src=0), start, data(root), count * 4,
                      count, [(root, 0, count)], in_place=True)
    if step.op == "send_recv":
        sender, receiver = members
        if rank == sender:
            def send(t: torch.Tensor) -> None:
                group.send(t, dst=receiver)

            return OpCase(send, data(rank), None, count * 4, count)

        def recv(_t: torch.Tensor) -> torch.Tensor:
            return group.recv((count,), torch.float32, src=sender)

        return OpCase(recv, torch.empty(0, device=dev), data(sender), count * 4, count,
                      [(sender, 0, count)])
    if step.op == "barrier":
        def barrier(_t: torch.Tensor) -> None:
            group.barrier()

        return OpCase(barrier, torch.empty(0, device=dev), None, 0, 0)
    raise ValueError(f"check-comm has no op {step.op!r}")
