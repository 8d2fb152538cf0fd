"""What `pypto check-comm` runs: the ops of each group kind, the size sweep, the injections,
and the ordered list of steps every rank walks. Pure Python, shared by the CLI (which
parses and reports) and the workers (which run the steps).

Every rank belongs to exactly one group of each kind, so every rank walks the same steps in
the same order; all groups of one kind run a step at the same time, as they do in serving.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from .topology import GroupUnavailableError, Topology

# The collectives each group kind uses in serving, in the order they are checked.
KIND_OPS: dict[str, tuple[str, ...]] = {
    "tp": ("all_reduce", "all_gather", "reduce_scatter"),
    "dp": ("all_reduce", "all_gather", "reduce_scatter"),
    "pp": ("send_recv",),
    "ep": ("all_to_all",),
    "world": ("broadcast", "barrier"),
}
OPS: tuple[str, ...] = ("all_reduce", "all_gather", "reduce_scatter", "send_recv",
                        "all_to_all", "broadcast", "barrier")
KINDS: tuple[str, ...] = ("tp", "pp", "dp", "ep", "world")
ALL_TO_ALL_SPLITS = ("even", "uneven")
INJECTIONS = ("slow", "hang", "corrupt", "crash")
DEFAULT_SIZES = "8B:1MB"
DEFAULT_SLOW_MS = 50.0
ELEMENT_BYTES = 4  # float32: integer values up to 2**24 add up exactly
DTYPE = "float32"
EXIT_DEADLINE = 3  # a worker whose op ran past its deadline (its record explains why)
PROGRESS_PREFIX = "pypto-check-comm:step "  # rank 0's progress line: PREFIX + "DONE/TOTAL"

_UNITS = {"": 1, "B": 1, "K": 1024, "KB": 1024, "KIB": 1024, "M": 1024**2, "MB": 1024**2,
          "MIB": 1024**2, "G": 1024**3, "GB": 1024**3, "GIB": 1024**3}
MAX_SIZE = 16 * 1024**3
MAX_TIMEOUT_S = 86400.0


class CheckUsageError(ValueError):
    """A bad check-comm option: the message names the flag, the value and the fix."""

    def __init__(self, flag: str, value: object, message: str):
        self.flag = flag
        self.value = value
        super().__init__(f"{flag} {value}: {message}")


def parse_size(text: str, flag: str = "--sizes") -> int:
    """'8B', '64KB', '1MiB', '256M', '4096' -> bytes (binary units, as nccl-tests)."""
    m = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", text)
    unit = m.group(2).upper() if m else None
    if m is None or unit not in _UNITS:
        raise CheckUsageError(flag, text, "is not a size; write a number with B, KB, MB or GB "
                              "(e.g. 8B, 64KB, 256MB)")
    size = int(m.group(1)) * _UNITS[unit]
    if not 0 < size <= MAX_SIZE:
        raise CheckUsageError(flag, text, f"must be between 1B and {MAX_SIZE // 1024**3}GB")
    return size


def parse_sizes(text: str) -> tuple[int, ...]:
    """A sweep 'LO:HI' (doubling, as nccl-tests -b/-e/-f 2), 'LO:HI:xF' (factor F), or a
    comma list '1KB,1MB'. Sizes in ascending order, without repeats."""
    flag = "--sizes"
    if "," in text or ":" not in text:
        sizes = {parse_size(part, flag) for part in text.split(",") if part.strip()}
        if not sizes:
            raise CheckUsageError(flag, repr(text), "give sizes like 8B:256MB or 1KB,1MB")
        return tuple(sorted(sizes))
    parts = text.split(":")
    if len(parts) > 3:
        raise CheckUsageError(flag, text, "use LO:HI or LO:HI:xF (e.g. 8B:256MB:x4)")
    lo, hi = parse_size(parts[0], flag), parse_size(parts[1], flag)
    factor = 2
    if len(parts) == 3:
        m = re.fullmatch(r"\s*[xX]?(\d+)\s*", parts[2])
        if m is None or int(m.group(1)) < 2:
            raise CheckUsageError(flag, text, "the step is a whole factor of 2 or more, like x4")
        factor = int(m.group(1))
    if lo > hi:
        raise CheckUsageError(flag, text, "the first size is larger than the last; use LO:HI")
    sizes = []
    size = lo
    while size <= hi:
        sizes.append(size)
        size *= factor
    return tuple(sizes)


def _parse_list(text: str, flag: str, known: tuple[str, ...]) -> tuple[str, ...]:
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if not names:
        raise CheckUsageError(flag, repr(text), f"name one or more of {', '.join(known)}")
    bad = [n for n in names if n not in known]
    if bad:
        raise CheckUsageError(flag, text, f"unknown {', '.join(bad)}; choose from "
                              f"{', '.join(known)}")
    return tuple(k for k in known if k in names)  # canonical order, no repeats


def parse_groups(text: str) -> tuple[str, ...]:
    return _parse_list(text, "--groups", KINDS)


def parse_ops(text: str) -> tuple[str, ...]:
    return _parse_list(text, "--ops", OPS)


@dataclass(frozen=True)
class Injection:
    """A fault made on purpose so each detection path can be seen: `slow` delays every op
    of `rank` by `delay_ms`, `hang` stops it before its first op, `corrupt` damages one
    element of every part of the data it sends, `crash` kills it (SIGKILL) in its first
    op's place."""

    kind: str
    rank: int
    delay_ms: float = DEFAULT_SLOW_MS


def parse_injection(text: str, world_size: int) -> Injection:
    """'slow:RANK[:MS]', 'hang:RANK', 'corrupt:RANK' or 'crash:RANK'."""
    flag = "--inject"
    parts = text.strip().split(":")
    if parts[0] not in INJECTIONS or len(parts) not in (2, 3) or not parts[1].isdigit():
        raise CheckUsageError(flag, text, "use slow:RANK[:MS], hang:RANK, corrupt:RANK or "
                              "crash:RANK")
    rank = int(parts[1])
    if rank >= world_size:
        raise CheckUsageError(flag, text, f"rank {rank} is outside the world "
                              f"(0..{world_size - 1})")
    delay = DEFAULT_SLOW_MS
    if len(parts) == 3:
        if parts[0] != "slow":
            raise CheckUsageError(flag, text, "only slow takes a delay (slow:RANK:MS)")
        try:
            delay = float(parts[2])
        except ValueError:
            delay = -1.0
        if not delay > 0:
            raise CheckUsageError(flag, text, "the delay is a positive number of milliseconds")
    return Injection(parts[0], rank, delay)


@dataclass(frozen=True)
class CheckSettings:
    """One check: which group kinds and ops, the size sweep, iterations, the per-op deadline."""

    kinds: tuple[str, ...]
    ops: tuple[str, ...]
    sizes: tuple[int, ...]
    iters: int = 20
    warmup: int = 5
    timeout_s: float = 30.0
    inject: Injection | None = None
    progress: bool = False  # rank 0 reports each finished step on stdout

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckSettings:
        inject = data.get("inject")
        return cls(kinds=tuple(data["kinds"]), ops=tuple(data["ops"]),
                   sizes=tuple(data["sizes"]), iters=data["iters"], warmup=data["warmup"],
                   timeout_s=data["timeout_s"], progress=data.get("progress", False),
                   inject=Injection(**inject) if inject else None)


def check_settings(topology: Topology, groups: str | None, ops: str | None, sizes: str,
                   iters: int, warmup: int, timeout_s: float, inject: str | None,
                   progress: bool = False) -> CheckSettings:
    """Parse and check the options against the layout; CheckUsageError names the flag."""
    if groups is None:
        kinds = tuple(k for k in KINDS if k in topology.group_kinds)
    else:
        kinds = parse_groups(groups)
        for kind in kinds:
            try:
                topology.num_groups(kind)
            except GroupUnavailableError as e:
                raise CheckUsageError("--groups", groups, f"{e}; drop {kind}") from None
    chosen_ops = OPS if ops is None else parse_ops(ops)
    runnable = {op for k in kinds for op in KIND_OPS[k]}
    if ops is not None:
        idle = [op for op in chosen_ops if op not in runnable]
        if idle:
            where = "; ".join(f"{op} runs on {'/'.join(k for k in KINDS if op in KIND_OPS[k])}"
                              for op in idle)
            raise CheckUsageError("--ops", ops, f"no chosen group runs {', '.join(idle)} "
                                  f"({where}); add the group with --groups or drop the op")
    if iters < 1:
        raise CheckUsageError("--iters", iters, "must be at least 1")
    if warmup < 0:
        raise CheckUsageError("--warmup", warmup, "must be 0 or more")
    if not 0 < timeout_s <= MAX_TIMEOUT_S:
        raise CheckUsageError("--timeout", timeout_s, "must be a positive number of seconds, "
                              f"at most {MAX_TIMEOUT_S:g}")
    return CheckSettings(
        kinds=kinds, ops=tuple(op for op in chosen_ops if op in runnable),
        sizes=parse_sizes(sizes), iters=iters, warmup=warmup, timeout_s=timeout_s,
        inject=None if inject is None else parse_injection(inject, topology.world_size),
        progress=progress)


@dataclass(frozen=True)
class CheckStep:
    """One op at one size on every group of one kind; `variant` says which flavour: the
    split of an all_to_all (even/uneven) or the PP stage boundary of a send/recv (0->1)."""

    index: int
    kind: str
    op: str
    size_bytes: int
    variant: str = ""
    boundary: int | None = field(default=None)  # send_recv: from stage `boundary` to +1

    @property
    def label(self) -> str:
        return f"{self.op}({self.variant})" if self.variant else self.op


def plan_steps(topology: Topology, settings: CheckSettings) -> tuple[CheckStep, ...]:
    """Every step of the check, in the order all ranks run them. Group kinds whose groups
    have one rank are left out (nothing crosses a link), except in a world of one, which
    still runs its steps so the device path is exercised end to end."""
    steps: list[CheckStep] = []
    world_of_one = topology.world_size == 1
    for kind in settings.kinds:
        size = topology.layout.group_size(kind)
        if size == 1 and not world_of_one:
            continue
        for op in KIND_OPS[kind]:
            if op not in settings.ops:
                continue
            if op == "barrier":
                steps.append(CheckStep(len(steps), kind, op, 0))
                continue
            if op == "all_to_all":
                variants = [(split, None) for split in ALL_TO_ALL_SPLITS]
            elif op == "send_recv":  # none in a world of one: no neighbour
                variants = [(f"{s}->{s + 1}", s) for s in range(size - 1)]
            else:
                variants = [("", None)]
            for variant, boundary in variants:
                for nbytes in settings.sizes:
                    steps.append(CheckStep(len(steps), kind, op, nbytes, variant, boundary))
    return tuple(steps)


def step_members(ranks: tuple[int, ...], step: CheckStep) -> tuple[int, ...]:
    """The ranks of one group that take part in `step` (a stage pair for send_recv)."""
    if step.op == "send_recv" and len(ranks) > 1:
        assert step.boundary is not None
        return ranks[step.boundary:step.boundary + 2]
    return ranks


def element_count(op: str, size_bytes: int, n: int) -> int:
    """float32 elements of one rank's buffer for `size_bytes` (nccl-tests' size: the whole
    buffer; for all_gather the output, for reduce_scatter and all_to_all the input), rounded
    so that it splits into `n` equal parts where the op needs it."""
    count = max(1, size_bytes // ELEMENT_BYTES)
    if op in ("all_gather", "reduce_scatter", "all_to_all"):
        count = max(n, count // n * n)
    return 0 if op == "barrier" else count


def uneven_splits(count: int, n: int, sender: int) -> list[int]:
    """Elements member `sender` sends to each member in the uneven all_to_all: weights
    1..n rotated by sender, so every pair moves a different amount; sums to about `count`."""
    weights = [1 + (sender + 2 * j) % n for j in range(n)]
    total = sum(weights)
    return [max(1, count * w // total) for w in weights]
