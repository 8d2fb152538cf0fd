"""Process groups from the resolved topology, and the accessors the model code uses.

`init_distributed()` is what a worker calls first: it reads the launcher's environment
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT, PYPTO_CONFIG), initializes
torch.distributed with the platform's backend (gloo on CPU, NCCL on CUDA, HCCL with
torch_npu) and creates one process group per group core resolved. `init_model_parallel`
is the one place groups are created: every rank walks `topology.group_kinds` and
`topology.groups(kind)` in the same order, as torch requires of `new_group`.

Under a service launch each restart domain (a DP replica without EP) is its own torch
world: RANK/WORLD_SIZE are then group-local, PYPTO_RANK is the rank in the whole layout,
and only the parts of core's groups inside that world are created (a replica's DP group is
the rank itself). Group coordinators keep speaking in global ranks either way.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

from ..core.config import ServingConfig
from ..core.loader import load_config
from ..core.platform import choose_platform
from ..core.topology import GroupInfo, Topology, resolve_topology
from .comm import GroupCoordinator
from .context import ParallelContext
from .errors import GroupsNotInitializedError, LaunchEnvError, PlatformUnavailableError

BACKENDS = {"cpu": "gloo", "cuda": "nccl", "npu": "hccl"}
CPU_TWIN_KINDS = ("replica", "dp")
"""Groups that also get a CPU (gloo) twin: the replica's step plan and the DP lock-step flag
cross them without a device sync."""
DEFAULT_TIMEOUT_S = 300.0
"""How long a collective waits for a peer before failing (PYPTO_COMM_TIMEOUT_S overrides)."""
MAX_TIMEOUT_S = 7 * 24 * 3600.0


@dataclass
class _State:
    topology: Topology
    rank: int
    device: torch.device
    platform: str
    groups: dict[str, GroupCoordinator] = field(default_factory=dict)
    cpu_groups: dict[str, GroupCoordinator] = field(default_factory=dict)


_state: _State | None = None


# --- environment and backend ---------------------------------------------------------------

@dataclass(frozen=True)
class LaunchEnv:
    """What the launcher (or torchrun) tells a worker about itself."""

    rank: int
    world_size: int
    local_rank: int
    config_path: str | None
    global_rank: int | None = None  # PYPTO_RANK: set when the torch world is one group

    @property
    def world_ranks(self) -> range:
        """The layout's ranks this torch world holds (all of them outside a service launch)."""
        first = (self.global_rank if self.global_rank is not None else self.rank) - self.rank
        return range(first, first + self.world_size)


def read_launch_env(environ: dict[str, str] | None = None) -> LaunchEnv:
    env = os.environ if environ is None else environ
    values = {}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        raw = env.get(name)
        if raw is None:
            raise LaunchEnvError(
                f"{name} is not set: this script is a worker; start it with "
                "`pypto launch --config FILE script.py` (or torchrun with PYPTO_CONFIG exported)"
            )
        try:
            values[name] = int(raw)
        except ValueError:
            raise LaunchEnvError(f"{name}={raw!r} is not an integer") from None
    raw = env.get("PYPTO_RANK")
    try:
        global_rank = int(raw) if raw is not None else None
    except ValueError:
        raise LaunchEnvError(f"PYPTO_RANK={raw!r} is not an integer") from None
    return LaunchEnv(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"],
                     env.get("PYPTO_CONFIG"), global_rank)


def resolve_platform(platform: str) -> str:
    """Core's platform rule over what torch sees here (`auto`: cuda, then npu, then cpu).
    Only the kinds the rule may pick are probed (importing torch_npu is not free)."""
    probes = {"cuda": torch.cuda.is_available, "npu": _npu_available}
    present = [kind for kind, usable in probes.items()
               if platform in (kind, "auto") and usable()]
    return choose_platform(platform, present, detected_by="torch.cuda / torch_npu see none")


def _npu_available() -> bool:
    try:
        import torch_npu  # noqa: F401
    except ImportError:
        return False
    return bool(getattr(torch, "npu", None) and torch.npu.is_available())


def _device_for(platform: str, local_rank: int, env: Mapping[str, str]) -> torch.device:
    """The launcher's PYPTO_DEVICE when it set one, else device LOCAL_RANK (torchrun)."""
    named = env.get("PYPTO_DEVICE")
    if named:
        return _bind(_launcher_device(named, platform))
    if platform == "cuda":
        index = _device_index(torch.cuda.device_count(), local_rank, "CUDA_VISIBLE_DEVICES")
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    if platform == "npu":
        index = _device_index(torch.npu.device_count(), local_rank, "ASCEND_RT_VISIBLE_DEVICES")
        torch.npu.set_device(index)
        return torch.device("npu", index)
    return torch.device("cpu")


def _launcher_device(named: str, platform: str) -> torch.device:
    try:
        device = torch.device(named)
    except RuntimeError:
        raise LaunchEnvError(f"PYPTO_DEVICE={named!r} is not a device name like 'cuda:0' or "
                             "'cpu'") from None
    if device.type != platform:
        raise LaunchEnvError(
            f"PYPTO_DEVICE={named} but cluster.platform is {platform!r}: the launcher and this "
            "worker disagree; start workers with `pypto launch` on the config they read")
    if platform != "cpu" and device.index is None:
        device = torch.device(platform, 0)
    return device


def _bind(device: torch.device) -> torch.device:
    """Make `device` this process's current one, refusing an index that is not visible."""
    if device.type == "cpu":
        return device
    module = torch.cuda if device.type == "cuda" else torch.npu
    visible = module.device_count()
    if device.index >= visible:
        mask = "CUDA_VISIBLE_DEVICES" if device.type == "cuda" else "ASCEND_RT_VISIBLE_DEVICES"
        raise PlatformUnavailableError(
            f"PYPTO_DEVICE={device} but only {visible} {device.type} devices are visible "
            f"({mask}); launch no more workers per node than devices")
    module.set_device(device.index)
    return device


def _device_index(visible: int, local_rank: int, mask_var: str) -> int:
    """LOCAL_RANK (torchrun's binding), or 0 when the launcher masked one device per worker."""
    if local_rank < visible:
        return local_rank
    if visible == 1:
        return 0
    raise PlatformUnavailableError(
        f"LOCAL_RANK={local_rank} but only {visible} devices are visible ({mask_var}); "
        "launch no more workers per node than devices")


def _check_coordinates(topology: Topology, rank: int, env: dict[str, str]) -> None:
    """The launcher's PYPTO_*_RANK must agree with core's topology of the config we loaded."""
    info = topology.rank_info(rank)
    for dim in ("dp", "tp", "pp", "ep"):
        raw = env.get(f"PYPTO_{dim.upper()}_RANK")
        mine = getattr(info, dim)
        if raw is not None and raw != str(mine):
            raise LaunchEnvError(
                f"PYPTO_{dim.upper()}_RANK={raw} but the config puts rank {rank} at {dim} "
                f"{mine}: the launcher and this worker read different configs")


def _timeout() -> timedelta:
    """PYPTO_COMM_TIMEOUT_S (default 300 s): how long any collective, on any group, waits."""
    raw = os.environ.get("PYPTO_COMM_TIMEOUT_S")
    try:
        seconds = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= MAX_TIMEOUT_S:
        raise LaunchEnvError(f"PYPTO_COMM_TIMEOUT_S={raw!r} is not a number of seconds in "
                             f"(0, {MAX_TIMEOUT_S:.0f}]; unset it for the default "
                             f"{DEFAULT_TIMEOUT_S:.0f} s")
    return timedelta(seconds=seconds)


# --- initialization --------------------------------------------------------------------------

def init_distributed(config: ServingConfig | None = None) -> ParallelContext:
    """Join the launched world and create every group of the config's layout.

    `config` defaults to the file named by PYPTO_CONFIG. Returns this rank's
    ParallelContext.
    """
    env = read_launch_env()
    if config is None:
        if not env.config_path:
            raise LaunchEnvError(
                "PYPTO_CONFIG is not set: `pypto launch` sets it to the resolved config; with "
                "torchrun, export PYPTO_CONFIG=path/to/config.json")
        config = load_config(env.config_path)
    topology = resolve_topology(config)
    world = env.world_ranks
    if env.global_rank is not None and world != range(topology.world_size):
        if world not in topology.restart_domains():
            raise LaunchEnvError(
                f"this torch world holds ranks {world.start}..{world.stop - 1} (PYPTO_RANK, "
                "RANK, WORLD_SIZE), which is neither the layout's world nor one of its "
                "restart domains "
                f"{[f'{d.start}..{d.stop - 1}' for d in topology.restart_domains()]}")
    elif env.world_size != topology.world_size:
        p = config.parallel
        raise LaunchEnvError(
            f"WORLD_SIZE={env.world_size} but the config's layout DP {p.data_parallel_size} x "
            f"PP {p.pipeline_parallel_size} x TP {p.tensor_parallel_size} needs "
            f"{topology.world_size} ranks; launch it with `pypto launch` (which starts the "
            "right number) or fix the parallel sizes")
    _check_coordinates(topology, world[env.rank], os.environ)
    platform = resolve_platform(config.cluster.platform)
    device = _device_for(platform, env.local_rank, os.environ)
    if not dist.is_initialized():
        dist.init_process_group(
            BACKENDS[platform], rank=env.rank, world_size=env.world_size, timeout=_timeout(),
        )
    return init_model_parallel(topology, device=device, platform=platform, world_ranks=world)


def init_model_parallel(
    topology: Topology, device: torch.device | None = None, platform: str | None = None,
    world_ranks: range | None = None,
) -> ParallelContext:
    """Create one process group per resolved group of `topology`; replaces earlier groups.

    Needs torch.distributed initialized over `world_ranks` (default: the whole layout; a
    service launch gives one restart domain). Every rank of the world must call this with
    the same topology: all of them create every group inside the world, in core's order.
    """
    global _state
    if not dist.is_initialized():
        raise GroupsNotInitializedError("world")
    world = range(topology.world_size) if world_ranks is None else world_ranks
    if dist.get_world_size() != len(world):
        raise LaunchEnvError(f"the world has {dist.get_world_size()} ranks but this layout "
                             f"needs {len(world)}")
    rank = world[dist.get_rank()]
    if device is None or platform is None:
        old = _state
        device = device or (old.device if old else torch.device("cpu"))
        platform = platform or (old.platform if old else "cpu")
    _destroy_groups()
    state = _State(topology=topology, rank=rank, device=device, platform=platform)
    timeout = _timeout()
    whole = len(world) == topology.world_size
    for kind in topology.group_kinds:
        for info in topology.groups(kind):
            if not whole:  # a group world: the part of this group inside it, if any
                inside = tuple(r for r in info.ranks if r in world)
                if not inside:
                    continue
                info = GroupInfo(info.kind, info.index, inside)
            group = _new_group(info, world, timeout)
            twin = (_new_cpu_twin(info, group, world, timeout) if kind in CPU_TWIN_KINDS
                    else None)
            if rank in info.ranks:
                state.groups[kind] = GroupCoordinator(info, rank, group, device, timeout)
                if twin is not None:
                    state.cpu_groups[kind] = GroupCoordinator(info, rank, twin,
                                                              torch.device("cpu"), timeout)
    _state = state
    return ParallelContext.build(topology, rank, state.groups, device)


def _new_group(info: GroupInfo, world: range, timeout: timedelta):
    """torch's group for `info` (its ranks made relative to this torch world); every
    subgroup waits at most PYPTO_COMM_TIMEOUT_S, like the world (new_group's default
    would be torch's own, 30 minutes on gloo)."""
    if info.kind == "world":
        return dist.group.WORLD
    return dist.new_group([r - world.start for r in info.ranks], timeout=timeout)


def _new_cpu_twin(info: GroupInfo, group, world: range, timeout: timedelta):
    """A gloo group over the same ranks (the group itself when the world is gloo already)."""
    if dist.get_backend() == "gloo":
        return group
    return dist.new_group([r - world.start for r in info.ranks], timeout=timeout,
                          backend="gloo")


def _destroy_groups() -> None:
    global _state
    if _state is None:
        return
    twins = [c for k, c in _state.cpu_groups.items()
             if c.process_group is not _state.groups[k].process_group]
    for coordinator in (*_state.groups.values(), *twins):
        pg = coordinator.process_group
        if pg is not None and pg is not dist.group.WORLD and coordinator.rank in coordinator.ranks:
            dist.destroy_process_group(pg)
    _state = None


def destroy_distributed() -> None:
    """Tear down every group and the world (end of a worker)."""
    _destroy_groups()
    if dist.is_initialized():
        dist.destroy_process_group()


# --- accessors --------------------------------------------------------------------------------

def get_group(kind: str) -> GroupCoordinator:
    """This rank's group of `kind`; a clear error before init or when the layout has none."""
    if _state is None:
        raise GroupsNotInitializedError(kind)
    try:
        return _state.groups[kind]
    except KeyError:
        # core knows why a kind is missing (EP on a dense model, EP off) and says so
        _state.topology.group(kind, _state.rank)
        raise


def get_tp_group() -> GroupCoordinator:
    return get_group("tp")


def get_pp_group() -> GroupCoordinator:
    return get_group("pp")


def get_dp_group() -> GroupCoordinator:
    return get_group("dp")


def get_ep_group() -> GroupCoordinator:
    return get_group("ep")


def get_world_group() -> GroupCoordinator:
    return get_group("world")


def get_cpu_group(kind: str) -> GroupCoordinator:
    """The CPU (gloo) twin of this rank's group of `kind` (one of CPU_TWIN_KINDS)."""
    if _state is None:
        raise GroupsNotInitializedError(kind)
    if kind not in _state.cpu_groups:
        raise KeyError(f"no CPU twin of the {kind} group; twins exist for {CPU_TWIN_KINDS}")
    return _state.cpu_groups[kind]


def comm_stats() -> dict[str, dict]:
    """Calls and bytes per op of every group of this rank, by group kind."""
    if _state is None:
        raise GroupsNotInitializedError("world")
    return {kind: g.stats.to_dict() for kind, g in _state.groups.items()}


def reset_comm_stats() -> None:
    if _state is not None:
        for g in _state.groups.values():
            g.stats.reset()
