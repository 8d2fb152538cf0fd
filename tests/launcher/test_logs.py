"""Worker output: rank prefixes, colour only on request, per-rank files, filters, redirects."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

pytestmark = pytest.mark.timeout(90)


def _run(lt, port, *flags, env=None):
    return lt.run(["--nproc-per-node", "2", "--master-port", str(port), *flags,
                   str(lt.workers / "talk.py")], timeout=60, env=env)


def test_lines_are_prefixed_by_rank_and_files_written(port, lt, tmp_path):
    result = _run(lt, port, "--log-dir", str(tmp_path / "logs"))
    assert result.returncode == 0, result.stderr
    for rank in (0, 1):
        out = [line for line in result.stdout.splitlines() if line.startswith(f"[rank{rank}]:")]
        assert out == [f"[rank{rank}]:out one {rank}", f"[rank{rank}]:out two {rank}",
                       f"[rank{rank}]:no newline {rank}"]
        assert f"[rank{rank}]:err {rank}" in result.stderr.splitlines()
        log = (tmp_path / "logs" / f"rank{rank}.log").read_text().splitlines()
        assert sorted(log) == sorted([f"out one {rank}", f"err {rank}", f"out two {rank}",
                                      f"no newline {rank}"])
    assert "\x1b[" not in result.stdout + result.stderr  # plain when piped


def test_colour_when_forced(port, lt):
    result = _run(lt, port, env={**os.environ, "FORCE_COLOR": "1"})
    assert result.returncode == 0, result.stderr
    assert "\x1b[" in result.stdout and "[rank1]:\x1b[0mout one 1" in result.stdout


def test_local_ranks_filter_shows_only_chosen_ranks(port, lt, tmp_path):
    result = _run(lt, port, "--local-ranks-filter", "1", "--log-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "[rank1]:out one 1" in result.stdout
    assert "[rank0]" not in result.stdout + result.stderr
    assert "out one 0" in (tmp_path / "rank0.log").read_text()


def test_redirects_keep_streams_off_the_console(port, lt, tmp_path):
    result = _run(lt, port, "--redirects", "0:1,1:3", "--log-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "[rank0]:out" not in result.stdout and "[rank0]:err 0" in result.stderr
    assert "[rank1]" not in result.stdout + result.stderr
    assert "err 1" in (tmp_path / "rank1.log").read_text()
    assert (tmp_path / "rank0.log").read_text().splitlines() == [
        "out one 0", "out two 0", "no newline 0"]  # only the redirected stream


def test_tee_without_log_dir_makes_one(port, lt):
    """--tee 0:1: rank 0's stdout goes to the console and its file; nothing else is logged
    (torchrun's meaning), and every stream still reaches the console."""
    result = _run(lt, port, "--tee", "0:1")
    assert result.returncode == 0, result.stderr
    line = next(x for x in result.stderr.splitlines() if "worker logs go to" in x)
    log_dir = line.rsplit(" ", 1)[1]
    try:
        assert "[rank0]:out one 0" in result.stdout and "[rank1]:out one 1" in result.stdout
        assert "[rank0]:err 0" in result.stderr
        log = open(os.path.join(log_dir, "rank0.log")).read().splitlines()
        assert log == ["out one 0", "out two 0", "no newline 0"]
        assert not os.path.exists(os.path.join(log_dir, "rank1.log"))
    finally:
        import shutil

        shutil.rmtree(log_dir, ignore_errors=True)


def _wait_files(paths, proc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        assert time.monotonic() < deadline and proc.poll() is None, "workers did not start"
        time.sleep(0.05)


@pytest.mark.parametrize("ending", ["failure", "signal"])
def test_supervision_never_waits_for_an_unread_console(ending, port, lt, tmp_path):
    """Nobody reads the launcher's stdout or stderr while rank 1 floods stdout: a rank's
    failure (or a SIGTERM to the launcher) is still acted on at once, reported, and the
    exit code says what happened. The queued output is given up after a bounded wait."""
    fail = ["--fail-rank", "0"] if ending == "failure" else []
    job = lt.start(["--nproc-per-node", "2", "--master-port", str(port), "--grace-period",
                    "1", str(lt.workers / "flood.py"), str(tmp_path), *fail])
    _wait_files([tmp_path / "rank0.ready", tmp_path / "rank1.ready"], job.proc, 60)
    if ending == "signal":
        time.sleep(0.5)  # the flood has filled the pipe by now
        job.signal(signal.SIGTERM)
    started = time.monotonic()
    try:
        code = job.proc.wait(timeout=30)  # stdout and stderr still unread
    except subprocess.TimeoutExpired:
        job.kill()
        pytest.fail("the launcher waited for its unread console")
    assert time.monotonic() - started < 20
    _, _, err = job.finish(timeout=10)
    if ending == "failure":
        assert code == 1, err
        assert "rank 0 (local rank 0, node 0) exited with code 3" in err, err
    else:
        assert code == 128 + signal.SIGTERM, err
        assert "stopped by SIGTERM" in err, err


def test_long_lines_pass_through_byte_for_byte(port, lt, tmp_path):
    """A 300 KB line from each of two ranks reaches the console and the log whole: no
    newline inserted, never mixed with the other rank's line."""
    size = 300_000
    result = lt.run(["--nproc-per-node", "2", "--master-port", str(port), "--log-dir",
                     str(tmp_path), str(lt.workers / "longline.py"), str(size)], timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    for rank in (0, 1):
        body = (f"<{rank}>" + "abcdefghij" * (size // 10))[:size]
        lines = [x for x in result.stdout.split("\n") if x.startswith(f"[rank{rank}]:")]
        assert lines == [f"[rank{rank}]:short {rank}", f"[rank{rank}]:{body}",
                         f"[rank{rank}]:after {rank}"], [len(x) for x in lines]
        log = (tmp_path / f"rank{rank}.log").read_bytes()
        assert log.replace(f"err {rank}\n".encode(), b"", 1) == (
            f"short {rank}\n{body}\nafter {rank}\n").encode()
    assert len(result.stdout.split("\n")) == 2 * 3 + 1
