"""Devices of this node, counted without importing torch, and per-rank binding.

cuda: entries of /proc/driver/nvidia/gpus (else `nvidia-smi -L` lines), narrowed by
CUDA_VISIBLE_DEVICES when set. npu: /dev/davinciN device files, narrowed by
ASCEND_RT_VISIBLE_DEVICES. cpu: no device limit (processes may oversubscribe cores).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from ..core.platform import ACCELERATORS, choose_platform
from ..core.platform import PLATFORMS as PLATFORMS  # re-exported for the plan's flag check

VISIBLE_VAR = {"cuda": "CUDA_VISIBLE_DEVICES", "npu": "ASCEND_RT_VISIBLE_DEVICES"}
DEVICE_BINDS = ("local-rank", "mask")


def physical_devices(platform: str) -> list[str]:
    """Ids of the accelerator devices of `platform` on this machine (empty for cpu)."""
    if platform == "cuda":
        gpus = Path("/proc/driver/nvidia/gpus")
        if gpus.is_dir():
            return [str(i) for i in range(len(list(gpus.iterdir())))]
        if shutil.which("nvidia-smi"):
            try:
                out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                                     timeout=10).stdout
            except (OSError, subprocess.SubprocessError):
                return []
            return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]
        return []
    if platform == "npu":
        ids = [m.group(1) for p in Path("/dev").glob("davinci*")
               if (m := re.fullmatch(r"davinci(\d+)", p.name))]
        return sorted(ids, key=int)
    return []


def visible_devices(platform: str, env: Mapping[str, str] | None = None) -> list[str]:
    """Devices the workers may use: the physical ones, narrowed by the platform's mask var."""
    env = os.environ if env is None else env
    devices = physical_devices(platform)
    mask = env.get(VISIBLE_VAR.get(platform, ""), None)
    if mask is None:
        return devices
    return [d.strip() for d in mask.split(",") if d.strip() and not d.strip().startswith("-")]


def detect_platform() -> str:
    """What `auto` means on this machine, by core's rule over the devices counted here."""
    return choose_platform("auto", [p for p in ACCELERATORS if physical_devices(p)])


def count_source(platform: str) -> str:
    """Where the device count came from, for error messages."""
    if platform == "cuda":
        return "/proc/driver/nvidia/gpus or nvidia-smi -L, narrowed by CUDA_VISIBLE_DEVICES"
    if platform == "npu":
        return "/dev/davinci*, narrowed by ASCEND_RT_VISIBLE_DEVICES"
    return "os.cpu_count()"


def binding_env(platform: str, local_rank: int, bind: str, visible: list[str]) -> dict[str, str]:
    """Variables that bind one local rank to its device.

    `local-rank` (torchrun's way) leaves every device visible; the worker uses device
    LOCAL_RANK. `mask` narrows the platform's visible-devices variable to the rank's own
    device, which the worker then sees as device 0. PYPTO_DEVICE names the device to use.
    """
    if platform not in VISIBLE_VAR:
        return {"PYPTO_DEVICE": "cpu"}
    if bind == "mask":
        return {VISIBLE_VAR[platform]: visible[local_rank], "PYPTO_DEVICE": f"{platform}:0"}
    return {"PYPTO_DEVICE": f"{platform}:{local_rank}"}


def cpu_sets(nproc: int, available: list[int] | None = None) -> list[list[int]]:
    """Split the CPUs this process may use into `nproc` contiguous, disjoint sets.

    With fewer CPUs than ranks, ranks share CPUs round-robin (one CPU each).
    """
    cpus = sorted(available if available is not None else os.sched_getaffinity(0))
    if nproc <= len(cpus):
        per, extra = divmod(len(cpus), nproc)
        sets, start = [], 0
        for i in range(nproc):
            n = per + (1 if i < extra else 0)
            sets.append(cpus[start:start + n])
            start += n
        return sets
    return [[cpus[i % len(cpus)]] for i in range(nproc)]
