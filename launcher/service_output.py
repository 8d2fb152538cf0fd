"""Worker output of a service launch: routed as a plain launch routes it, with per-rank log
files that rotate by size and a marker line where a rank's restart begins."""

from __future__ import annotations

from typing import TextIO

from .logfile import RotatingLog
from .output import OutputRouter, open_log
from .plan import Plan


class ServiceOutput(OutputRouter):
    """OutputRouter with size-rotated log files (logfile.RotatingLog)."""

    def __init__(self, plan: Plan, stdout: TextIO | None, stderr: TextIO | None,
                 max_log_bytes: int, log_backups: int):
        super().__init__(plan, stdout, stderr)
        self.max_log_bytes = max_log_bytes
        self.log_backups = log_backups

    def open_logs(self, restart_count: int = 0) -> None:
        """Open every logged rank's file once per launch (restarts append to it)."""
        if self.plan.log_dir is None:
            return
        self.plan.log_dir.mkdir(parents=True, exist_ok=True)
        for local in range(self.plan.nproc_per_node):
            if local in self._files or not (self.plan.logged(local, 1)
                                            or self.plan.logged(local, 2)):
                continue
            self._files[local] = RotatingLog(self.log_path(local), self.max_log_bytes,
                                             self.log_backups, opener=open_log)

    def mark_restart(self, local_rank: int, attempt: int) -> None:
        """A marker line before a restarted rank's output; its tail starts afresh."""
        self.tails[local_rank].clear()
        log = self._files.get(local_rank)
        if log is not None:
            log.write(f"# pypto launch: restart {attempt}\n".encode())
            log.flush()
