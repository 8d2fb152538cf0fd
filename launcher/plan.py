"""LaunchSpec (what the user asked for) resolved into a Plan (what will run), once.

All checks that can fail before a process exists live here: flags vs the config, device
counts, ports, the script or module. Each raises LaunchError with a one-line fix.
"""

from __future__ import annotations

import math
import os
import re
import socket
import stat
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.errors import one_line
from .devices import DEVICE_BINDS, PLATFORMS, count_source, detect_platform, visible_devices
from .env import SECRET_VARS
from .errors import LaunchError
from .target import Target, check_target

if TYPE_CHECKING:
    from ..core.config import ServingConfig
    from ..core.topology import Topology

START_METHODS = ("auto", "fork", "spawn")
START_METHOD_ENV = "PYPTO_LAUNCH_START_METHOD"
DEFAULT_MASTER_PORT = 29500
DEFAULT_RDZV_PORT = 29400  # torchrun's port for an --rdzv-endpoint without one
RDZV_BACKENDS = ("c10d", "static")  # accepted for torchrun parity; our rendezvous is our own
STREAMS = {0: (False, False), 1: (True, False), 2: (False, True), 3: (True, True)}
# Bounds of the numeric flags: beyond them a value is a mistake, not a plan.
MAX_NPROC = 1024  # workers on one node
MAX_NODES = 65536
MAX_RESTARTS = 10_000
MAX_GRACE_S = 3600.0
MAX_RDZV_TIMEOUT_S = 86400.0


@dataclass
class LaunchSpec:
    """A launch request, field for field the flags of `pypto launch` (torchrun's names).

    `config` is a resolved ServingConfig or a config file path; `profile` a shipped profile
    name. With either, the world comes from the config and contradicting flags are errors.
    `layout_flags` ({'parallel': {...}}, vLLM's -dp/-tp/... as core.flags maps them),
    `model_profile` and `flag_names` (dotted path -> flag, for messages) describe a layout
    from flags, layered over the file/profile by core's precedence; this node's numeric
    --nnodes/--nproc-per-node and --platform then form its cluster section.
    None means "not given" (torchrun's defaults apply).
    """

    target: str
    args: Sequence[str] = ()
    module: bool = False
    config: ServingConfig | str | Path | None = None
    profile: str | None = None
    nnodes: int | str | None = None
    nproc_per_node: int | str | None = None
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None
    standalone: bool = False
    max_restarts: int = 0
    run_id: str = "none"
    log_dir: str | Path | None = None
    redirects: str | None = None
    tee: str | None = None
    local_ranks_filter: str | Sequence[int] | None = None
    platform: str | None = None
    device_bind: str = "local-rank"
    cpu_bind: bool = False
    start_method: str | None = None
    grace_period: float = 5.0
    rdzv_timeout: float = 60.0
    env: Mapping[str, str] | None = None
    rdzv_endpoint: str | None = None
    rdzv_backend: str | None = None
    layout_flags: Mapping[str, Any] | None = None
    model_profile: str | None = None
    flag_names: Mapping[str, str] | None = None


# The torchrun flags that double as a cluster section when flags describe the layout.
CLUSTER_FLAGS = {"cluster.nnodes": "--nnodes", "cluster.devices_per_node": "--nproc-per-node",
                 "cluster.platform": "--platform"}


@dataclass(frozen=True)
class Plan:
    """A validated launch: the world, this node's share of it, and how to run and log it."""

    target: Target
    nnodes: int
    nproc_per_node: int
    node_rank: int
    master_addr: str
    master_port: int
    max_restarts: int
    run_id: str
    platform: str
    visible: tuple[str, ...]
    device_bind: str
    cpu_bind: bool
    start_method: str
    grace_period: float
    rdzv_timeout: float
    log_dir: Path | None
    redirects: tuple[tuple[bool, bool], ...]
    tee: tuple[tuple[bool, bool], ...]
    shown_ranks: frozenset[int] | None
    base_env: Mapping[str, str]
    config: ServingConfig | None = None
    warnings: tuple[str, ...] = ()
    cwd: str = field(default_factory=os.getcwd)
    secret: bytes = field(default=b"", repr=False)  # the job's (multi-node), see wire.py

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node

    def global_rank(self, local_rank: int) -> int:
        return self.node_rank * self.nproc_per_node + local_rank

    def logged(self, local_rank: int, fd: int) -> bool:
        """Whether stream `fd` (1 stdout, 2 stderr) of `local_rank` goes to its log file:
        with --redirects/--tee only the streams they name (torchrun), else every stream."""
        if self.log_dir is None:
            return False
        chosen = (*self.redirects, *self.tee)
        if not any(out or err for out, err in chosen):
            return True
        return self.redirects[local_rank][fd - 1] or self.tee[local_rank][fd - 1]

    def topology(self) -> Topology | None:
        """Core's topology of the config (None without one): computed there, once."""
        if self.config is None:
            return None
        from ..core.topology import resolve_topology

        return resolve_topology(self.config)


def make_plan(spec: LaunchSpec) -> Plan:
    """Resolve and check `spec`; raise LaunchError (or core's ConfigError) on bad input."""
    warnings: list[str] = []
    cfg = _resolve_config(spec)
    platform = _platform(spec, cfg, dict(os.environ if spec.env is None else spec.env))
    nnodes = _nnodes(spec, cfg)
    nproc = _nproc(spec, cfg, platform)
    given_env = dict(os.environ if spec.env is None else spec.env)
    base_env = {k: v for k, v in given_env.items() if k not in SECRET_VARS}
    visible = visible_devices(platform, base_env) if platform != "cpu" else []
    _check_devices(platform, nproc, visible, warnings)
    node_rank = whole_number(spec.node_rank, "--node-rank", 0, MAX_NODES - 1)
    if not node_rank < nnodes:
        raise LaunchError(f"--node-rank {node_rank} is out of range for --nnodes {nnodes}; "
                          f"use 0..{nnodes - 1}")
    max_restarts = whole_number(spec.max_restarts, "--max-restarts", 0, MAX_RESTARTS)
    if max_restarts > 0 and nnodes > 1:
        raise LaunchError(f"--max-restarts {spec.max_restarts} with --nnodes {nnodes}: "
                          "restarts are not coordinated across nodes yet; use "
                          "--max-restarts 0 (a failure on any node stops every node)")
    if spec.device_bind not in DEVICE_BINDS:
        raise LaunchError(f"--device-bind {spec.device_bind!r} is not one of "
                          f"{', '.join(DEVICE_BINDS)}")
    grace_period = _seconds(spec.grace_period, "--grace-period", 0.0, MAX_GRACE_S)
    rdzv_timeout = _seconds(spec.rdzv_timeout, "--rdzv-timeout", 0.0, MAX_RDZV_TIMEOUT_S,
                            allow_low=False)
    addr, port = _master(spec, nnodes)
    secret = b""
    if nnodes > 1:
        from .wire import load_secret

        secret = load_secret(given_env)
    target = check_target(spec.target, spec.module, list(spec.args))
    redirects = _stream_map(spec.redirects, "--redirects", nproc)
    tee = _stream_map(spec.tee, "--tee", nproc)
    log_dir = None
    if spec.log_dir is not None:
        log_dir = check_log_dir(spec.log_dir, [node_rank * nproc + r for r in range(nproc)])
    elif any(r != (False, False) for r in (*redirects, *tee)):
        log_dir = Path(tempfile.mkdtemp(prefix="pypto-launch-logs-"))
        warnings.append(f"--redirects/--tee without --log-dir: worker logs go to {log_dir}")
    return Plan(
        target=target, nnodes=nnodes, nproc_per_node=nproc, node_rank=node_rank,
        master_addr=addr, master_port=port, max_restarts=max_restarts,
        run_id=_run_id(spec), platform=platform, visible=tuple(visible),
        device_bind=spec.device_bind, cpu_bind=spec.cpu_bind,
        start_method=_start_method(spec, base_env), grace_period=grace_period,
        rdzv_timeout=rdzv_timeout, log_dir=log_dir, redirects=redirects,
        tee=tee, shown_ranks=_ranks_filter(spec.local_ranks_filter, nproc), base_env=base_env,
        config=_with_platform(cfg, platform), warnings=tuple(warnings), secret=secret,
    )


def _seconds(value: object, flag: str, low: float, high: float,
             allow_low: bool = True) -> float:
    """A number of seconds: finite, within [low, high] (or (low, high])."""
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise LaunchError(f"{flag} {value!r} is not a number of seconds") from None
    in_range = (low <= seconds if allow_low else low < seconds) and seconds <= high
    if not math.isfinite(seconds) or not in_range:
        bound = ">=" if allow_low else ">"
        raise LaunchError(f"{flag} {value} must be a finite number of seconds {bound} {low:g} "
                          f"and <= {high:g}")
    return seconds


def whole_number(value: object, flag: str, low: int, high: int) -> int:
    """A whole number within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise LaunchError(f"{flag} {value!r} is not a whole number")
    try:
        n = int(value)
    except ValueError:
        raise LaunchError(f"{flag} {value!r} is not a whole number") from None
    if not low <= n <= high:
        raise LaunchError(f"{flag} {_short(value)} is out of range: use {low}..{high}")
    return n


def _short(value: object) -> str:
    text = str(value)
    return text if len(text) <= 24 else f"{text[:20]}... ({len(text)} digits)"


def check_log_dir(value: str | Path, ranks: list[int]) -> Path:
    """--log-dir: a directory we can create and write, whose rank<N>.log files (if any
    exist) are plain files of their own. The launcher replaces them; it never follows a
    symlink or writes through a hard link to another file. Created here, before anything
    starts."""
    path = Path(value).absolute()
    value = one_line(str(value), 300)  # as echoed in the messages below
    if path.exists() and not path.is_dir():
        raise LaunchError(f"--log-dir {value} is not a directory; give a directory (it is "
                          "created if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe, probe_path = tempfile.mkstemp(prefix=".pypto-probe-", dir=path)
        os.close(probe)
        os.unlink(probe_path)
    except OSError as e:
        raise LaunchError(f"--log-dir {value} is not writable ({e.strerror or e}); give a "
                          "directory you can write") from None
    for rank in ranks:
        log = path / f"rank{rank}.log"
        try:
            info = log.lstat()
        except FileNotFoundError:
            continue
        except OSError as e:
            raise LaunchError(f"--log-dir {value}: cannot check {log.name} ({e.strerror}); "
                              "remove it or give another directory") from None
        what = None
        if stat.S_ISLNK(info.st_mode):
            what = "a symlink (the launcher does not follow links)"
        elif not stat.S_ISREG(info.st_mode):
            what = "not a regular file"
        elif info.st_nlink > 1:
            what = "a hard link shared with another file"
        if what:
            raise LaunchError(f"--log-dir {value}: {log.name} exists and is {what}; remove "
                              "it or give another directory")
    return path.resolve()


def _describes_layout(spec: LaunchSpec) -> bool:
    return spec.model_profile is not None or bool(spec.layout_flags)


def _resolve_config(spec: LaunchSpec) -> ServingConfig | None:
    if spec.config is None and spec.profile is None and not _describes_layout(spec):
        return None
    from ..core.config import ServingConfig
    from ..core.loader import resolve_config

    if isinstance(spec.config, ServingConfig):
        if spec.profile is not None or _describes_layout(spec):
            raise LaunchError("give either a ServingConfig or a profile/layout flags, not both")
        return spec.config
    if not _describes_layout(spec):
        return resolve_config(path=spec.config, profile=spec.profile)
    # Flags describe the layout: this node's numeric torchrun flags are its cluster section
    # (a word like `auto` is checked against the result below, like any other config).
    cluster = {"nnodes": _numeric(spec.nnodes), "devices_per_node": _numeric(spec.nproc_per_node),
               "platform": spec.platform}
    cluster = {k: v for k, v in cluster.items() if v is not None}
    overrides = {**(spec.layout_flags or {})}
    if cluster:
        overrides["cluster"] = {**overrides.get("cluster", {}), **cluster}
    names = {**(spec.flag_names or {}),
             **{path: flag for path, flag in CLUSTER_FLAGS.items()
                if path.split(".")[1] in cluster}}
    return resolve_config(spec.config, spec.profile, overrides, spec.model_profile, names)


def _numeric(value: int | str | None) -> int | None:
    if isinstance(value, int):
        return value
    return int(value) if isinstance(value, str) and value.isdigit() else None


def _config_name(spec: LaunchSpec) -> str:
    if _describes_layout(spec) and spec.config is None and spec.profile is None:
        return "the layout given by flags"
    if spec.config is not None and not hasattr(spec.config, "cluster"):
        return f"config {spec.config}"
    return f"profile {spec.profile}" if spec.profile else "the config"


def _platform(spec: LaunchSpec, cfg: ServingConfig | None, env: Mapping[str, str]) -> str:
    """--platform, else the config's, else PYPTO_PLATFORM, else what this machine has.

    PYPTO_PLATFORM ranks below both, so `PYPTO_PLATFORM=cpu` keeps gloo jobs on the CPU of a
    GPU machine without contradicting a config that names its platform.
    """
    flag = spec.platform
    if flag is not None and flag not in PLATFORMS:
        raise LaunchError(f"--platform {flag!r} is not one of {', '.join(PLATFORMS)}")
    from_cfg = cfg.cluster.platform if cfg is not None else "auto"
    if flag not in (None, "auto") and from_cfg != "auto" and flag != from_cfg:
        raise LaunchError(f"--platform {flag} contradicts cluster.platform={from_cfg} of "
                          f"{_config_name(spec)}; drop the flag or change the config")
    chosen = flag if flag not in (None, "auto") else from_cfg
    if chosen == "auto":
        chosen = env.get("PYPTO_PLATFORM") or "auto"
        if chosen not in PLATFORMS:
            raise LaunchError(f"PYPTO_PLATFORM={chosen!r} is not one of {', '.join(PLATFORMS)}")
    return detect_platform() if chosen == "auto" else chosen


def _with_platform(cfg: ServingConfig | None, platform: str) -> ServingConfig | None:
    """The config the workers get names the platform the launcher chose, so a worker never
    re-detects 'auto' differently (a CUDA machine running a job kept on the CPU)."""
    if cfg is None or cfg.cluster.platform == platform:
        return cfg
    return cfg.model_copy(update={"cluster": cfg.cluster.model_copy(update={"platform": platform})})


def _as_int(value: int | str, flag: str, high: int) -> int:
    return whole_number(value, flag, 1, high)


def _nnodes(spec: LaunchSpec, cfg: ServingConfig | None) -> int:
    value = spec.nnodes
    if isinstance(value, str) and ":" in value:
        lo, _, hi = value.partition(":")
        if lo != hi:
            raise LaunchError(f"--nnodes {value}: elastic node ranges are not supported; "
                              "give one number of nodes")
        value = lo
    n = _as_int(value, "--nnodes", MAX_NODES) if value is not None else None
    if cfg is not None:
        if n is not None and n != cfg.cluster.nnodes:
            raise LaunchError(f"--nnodes {n} contradicts cluster.nnodes={cfg.cluster.nnodes} "
                              f"of {_config_name(spec)}; drop the flag or change the config")
        return _from_config(cfg.cluster.nnodes, "cluster.nnodes", MAX_NODES, spec)
    if spec.standalone and n not in (None, 1):
        raise LaunchError("--standalone runs a single node; drop --nnodes or set it to 1")
    return n or 1


def _nproc(spec: LaunchSpec, cfg: ServingConfig | None, platform: str) -> int:
    value = spec.nproc_per_node
    if isinstance(value, str) and value in ("auto", "cpu", "gpu"):
        if value == "gpu" or (value == "auto" and platform != "cpu"):
            plat = "cuda" if value == "gpu" else platform
            n = len(visible_devices(plat, spec.env))
            if n == 0:
                raise LaunchError(f"--nproc-per-node {value}: no {plat} devices found "
                                  f"(counted from {count_source(plat)})")
        else:
            n = os.cpu_count() or 1
    else:
        n = _as_int(value, "--nproc-per-node", MAX_NPROC) if value is not None else None
    if cfg is not None:
        per_node = cfg.cluster.devices_per_node
        if n is not None and n != per_node:
            raise LaunchError(
                f"--nproc-per-node {value if str(value) == str(n) else f'{value} ({n} here)'} "
                f"contradicts cluster.devices_per_node={per_node} of "
                f"{_config_name(spec)} (world size {cfg.parallel.world_size} over "
                f"{cfg.cluster.nnodes} node(s)); drop the flag or change the config")
        return _from_config(per_node, "cluster.devices_per_node", MAX_NPROC, spec)
    return n or 1


def _from_config(value: int, name: str, high: int, spec: LaunchSpec) -> int:
    if value > high:
        raise LaunchError(f"{name}={_short(value)} of {_config_name(spec)} is more than "
                          f"pypto launch runs ({high}); lower it")
    return value


def _check_devices(platform: str, nproc: int, visible: list[str], warnings: list[str]) -> None:
    if platform == "cpu":
        cores = os.cpu_count() or 1
        if nproc > cores:
            warnings.append(f"{nproc} workers on {cores} CPU cores: they will share cores")
        return
    if nproc > len(visible):
        raise LaunchError(
            f"{nproc} processes per node but this machine has {len(visible)} {platform} "
            f"device(s) (counted from {count_source(platform)}); lower --nproc-per-node / "
            "cluster.devices_per_node or use --platform cpu")


def _master(spec: LaunchSpec, nnodes: int) -> tuple[str, int]:
    if spec.rdzv_backend not in (None, *RDZV_BACKENDS):
        raise LaunchError(f"--rdzv-backend {spec.rdzv_backend!r} is not supported; pypto "
                          f"launch has its own rendezvous ({' and '.join(RDZV_BACKENDS)} are "
                          "accepted and ignored)")
    if spec.rdzv_endpoint:
        return _endpoint(spec)
    if spec.standalone:
        if spec.master_port is not None:
            raise LaunchError("--standalone picks its own port; drop --master-port")
        return spec.master_addr or "127.0.0.1", pick_free_port()
    addr = spec.master_addr or "127.0.0.1"
    port = DEFAULT_MASTER_PORT if spec.master_port is None else spec.master_port
    if not 0 < port < 65536:
        raise LaunchError(f"--master-port {port} is not a TCP port (1..65535)")
    if nnodes > 1 and spec.master_addr is None:
        raise LaunchError("--nnodes > 1 needs --master-addr (the host of node 0)")
    return addr, port


def _endpoint(spec: LaunchSpec) -> tuple[str, int]:
    """torchrun's --rdzv-endpoint HOST[:PORT] (IPv6 as [ADDR]:PORT): node 0's launcher."""
    value = spec.rdzv_endpoint or ""
    if spec.master_addr is not None or spec.master_port is not None or spec.standalone:
        raise LaunchError(f"--rdzv-endpoint {value} names the master already; drop "
                          "--master-addr/--master-port/--standalone")
    m = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?|([^:\[\]]+)(?::(\d+))?", value.strip())
    if m is None:
        raise LaunchError(f"--rdzv-endpoint {value!r}: give HOST or HOST:PORT "
                          "(e.g. node0:29400)")
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4) or DEFAULT_RDZV_PORT)
    if not 0 < port < 65536:
        raise LaunchError(f"--rdzv-endpoint {value}: port {port} is not a TCP port "
                          "(1..65535)")
    return host, port


def _run_id(spec: LaunchSpec) -> str:
    """As torchrun: --standalone without an explicit id gets a random one."""
    if spec.standalone and spec.run_id == "none":
        import uuid

        return str(uuid.uuid4())
    return spec.run_id


def pick_free_port() -> int:
    """A TCP port free right now on every interface (bound and released)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _stream_map(value: str | None, flag: str, nproc: int) -> tuple[tuple[bool, bool], ...]:
    """torchrun's stream spec: '3' for all ranks, or '0:1,1:2' per local rank.

    Each entry is (stdout, stderr): 0 none, 1 stdout, 2 stderr, 3 both.
    """
    if value is None or value == "":
        return ((False, False),) * nproc
    value = value.strip()
    if re.fullmatch(r"[0-3]", value):
        return (STREAMS[int(value)],) * nproc
    per = [(False, False)] * nproc
    for item in value.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*:\s*([0-3])\s*", item)
        if m is None:
            raise LaunchError(f"{flag} {value!r}: use 0-3 for every rank or LOCAL_RANK:0-3 "
                              "pairs such as 0:1,1:2 (1 stdout, 2 stderr, 3 both)")
        rank = int(m.group(1))
        if rank >= nproc:
            raise LaunchError(f"{flag} names local rank {rank} but there are {nproc}")
        per[rank] = STREAMS[int(m.group(2))]
    return tuple(per)


def _ranks_filter(value: str | Sequence[int] | None, nproc: int) -> frozenset[int] | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            ranks = [int(v) for v in value.split(",") if v.strip()]
        except ValueError:
            raise LaunchError(
                f"--local-ranks-filter {value!r}: give local ranks like 0,2") from None
    else:
        ranks = list(value)
    bad = [r for r in ranks if not 0 <= r < nproc]
    if bad:
        raise LaunchError(f"--local-ranks-filter names local rank(s) {bad} but this node runs "
                          f"local ranks 0..{nproc - 1}")
    return frozenset(ranks)


def _start_method(spec: LaunchSpec, env: Mapping[str, str]) -> str:
    method = spec.start_method or env.get(START_METHOD_ENV) or "auto"
    if method not in START_METHODS:
        raise LaunchError(f"start method {method!r} (from --start-method or "
                          f"{START_METHOD_ENV}) is not one of {', '.join(START_METHODS)}")
    return method
