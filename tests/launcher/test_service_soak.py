"""Long runs: many restart cycles leave the launcher's open fds and memory flat; per-rank
logs rotate by size."""

from __future__ import annotations

import os
import signal

import psutil
import pytest

pytestmark = pytest.mark.timeout(240)

WARM_UP, CYCLES = 3, 20


def test_restart_cycles_keep_fds_and_memory_flat(service):
    run = service.start(service.config(dp=2), max_restarts=WARM_UP + CYCLES,
                        restart_backoff_s=0.0)
    me = psutil.Process()
    ready = run.until(lambda e: e.kind == "ready" and e.group == 1)
    samples = []
    for cycle in range(WARM_UP + CYCLES):
        if cycle == WARM_UP:
            samples.append((me.num_fds(), me.memory_info().rss))
        os.kill(ready.payloads[1]["pid"], signal.SIGKILL)
        ready = run.until(lambda e, n=cycle + 1: e.kind == "ready" and e.group == 1
                          and e.attempt == n)
    samples.append((me.num_fds(), me.memory_info().rss))
    (fds0, rss0), (fds1, rss1) = samples
    assert fds1 == fds0, f"open fds {fds0} -> {fds1} over {CYCLES} restarts"
    assert rss1 - rss0 < 4 << 20, f"RSS grew {(rss1 - rss0) >> 10} KiB over {CYCLES} restarts"
    assert run.history(0) == [("starting", 0), ("ready", 0)]
    assert run.stop().restarts == WARM_UP + CYCLES


def test_per_rank_logs_rotate_by_size(service, tmp_path):
    logs = tmp_path / "logs"
    run = service.start(service.config(dp=2), env={"SERVICE_SPEAK_BYTES": "40000"},
                        log_dir=logs, max_log_bytes=8192, log_backups=2)
    for _ in range(2):
        run.until(lambda e: e.kind == "ready")
    run.stop()
    for rank in (0, 1):
        files = sorted(p.name for p in logs.glob(f"rank{rank}.log*"))
        assert files == [f"rank{rank}.log", f"rank{rank}.log.1", f"rank{rank}.log.2"]
        sizes = [(logs / f).stat().st_size for f in files]
        assert all(0 < s <= 8192 for s in sizes), sizes
        assert (logs / f"rank{rank}.log").read_text().splitlines()[-1].startswith("00000399 ")
