"""The environment of one worker: torchrun's variables, PyPTO's coordinates, device binding.

torchrun parity: the same names with the same meaning, so a torchrun script runs unchanged.
One deliberate difference: TORCHELASTIC_USE_AGENT_STORE is "False", because this launcher
hosts no TCP store (it never imports torch); rank 0 hosts it at MASTER_ADDR:MASTER_PORT, as
plain env:// initialisation does.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .devices import binding_env

if TYPE_CHECKING:
    from ..core.topology import Topology
    from .plan import Plan

SIGNALS_TO_HANDLE = "SIGTERM,SIGINT,SIGHUP,SIGQUIT"
# The launchers' shared secret (wire.py): read by the launcher, never given to a worker.
SECRET_ENV = "PYPTO_LAUNCH_SECRET"
SECRET_FILE_ENV = "PYPTO_LAUNCH_SECRET_FILE"
SECRET_VARS = (SECRET_ENV, SECRET_FILE_ENV)


def worker_env(plan: Plan, local_rank: int, restart_count: int, run_dir: Path,
               topology: Topology | None) -> dict[str, str]:
    """Full environment for `local_rank` of this node in attempt `restart_count`."""
    rank = plan.global_rank(local_rank)
    world = plan.world_size
    env = dict(plan.base_env)
    env.update({
        "RANK": str(rank),
        "LOCAL_RANK": str(local_rank),
        "WORLD_SIZE": str(world),
        "LOCAL_WORLD_SIZE": str(plan.nproc_per_node),
        "GROUP_RANK": str(plan.node_rank),
        "GROUP_WORLD_SIZE": str(plan.nnodes),
        "ROLE_RANK": str(rank),
        "ROLE_WORLD_SIZE": str(world),
        "ROLE_NAME": "default",
        "MASTER_ADDR": plan.master_addr,
        "MASTER_PORT": str(plan.master_port),
        "TORCHELASTIC_RESTART_COUNT": str(restart_count),
        "TORCHELASTIC_MAX_RESTARTS": str(plan.max_restarts),
        "TORCHELASTIC_RUN_ID": plan.run_id,
        "TORCHELASTIC_USE_AGENT_STORE": "False",
        "TORCHELASTIC_SIGNALS_TO_HANDLE": SIGNALS_TO_HANDLE,
        "TORCHELASTIC_ERROR_FILE": str(error_file(run_dir, restart_count, local_rank)),
    })
    env.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    if plan.nproc_per_node > 1:
        env.setdefault("OMP_NUM_THREADS", "1")
    env.update(binding_env(plan.platform, local_rank, plan.device_bind, list(plan.visible)))
    if topology is not None:
        env.update(coordinates_env(topology, rank, run_dir))
    return env


def coordinates_env(topology: Topology, rank: int, run_dir: Path) -> dict[str, str]:
    """PYPTO_CONFIG and the rank's DP/TP/PP(/EP) coordinates from core's topology.

    PYPTO_EP_RANK is absent when the layout has no EP group (dense model or EP off).
    """
    info = topology.rank_info(rank)
    env = {
        "PYPTO_CONFIG": str(config_file(run_dir)),
        "PYPTO_DP_RANK": str(info.dp),
        "PYPTO_TP_RANK": str(info.tp),
        "PYPTO_PP_RANK": str(info.pp),
    }
    if info.ep is not None:
        env["PYPTO_EP_RANK"] = str(info.ep)
    return env


def config_file(run_dir: Path) -> Path:
    """Where the resolved config is written for the workers (PYPTO_CONFIG)."""
    return run_dir / "config.json"


def error_file(run_dir: Path, restart_count: int, local_rank: int) -> Path:
    """Where torch's @record writes a worker's error (TORCHELASTIC_ERROR_FILE)."""
    return run_dir / f"attempt_{restart_count}" / str(local_rank) / "error.json"
