"""The zygote: the node's helper that starts every worker and outlives a killed launcher.

Run as `python -m pypto_serving.launcher.zygote FD LAUNCHER_PID` by the launcher, which
talks to it over the AF_UNIX SOCK_SEQPACKET socket FD (JSON messages; pipe fds travel
with SCM_RIGHTS). Stdlib only, no threads. With a preload (torch) it forks workers that run
the user's code in the warm interpreter, after reporting whether forking is safe (one OS
thread, no accelerator runtime initialised); without one it starts fresh interpreters
(fork + exec, the spawn start method). Either way every worker is its child, and it is a
child subreaper, so every descendant of every worker stays below it.

Messages, launcher -> zygote: {"op": "fork", ...worker request} with [stdout_w, stderr_w]
(a request with "argv" is exec'd instead of run here).
Zygote -> launcher: {"op": "ready", "fork_safe", "reason"},
{"op": "forked", "local_rank", "pid"}, {"op": "exited", "ends": [[pid, raw wait status]...]}.
EOF of the socket means "stop", and so does the launcher's death (kill -9 included: the
kernel closes its end): the zygote kills every descendant, reaps them and exits.
"""

from __future__ import annotations

import atexit
import io
import json
import os
import runpy
import selectors
import signal
import socket
import sys
import threading
import time
import traceback

from .prctl import become_subreaper, die_with_parent, keep_on_parent_death

PRELOAD_ENV = "PYPTO_ZYGOTE_PRELOAD"
DEFAULT_PRELOAD = "torch,torch.distributed"
MAX_MESSAGE = 1 << 20
TEARDOWN_WAIT = 3.0  # seconds to kill and reap every descendant when the launcher is gone


def send(sock: socket.socket, message: dict, fds: list[int] | tuple[int, ...] = ()) -> None:
    """One JSON message, with `fds` attached (SCM_RIGHTS) when given."""
    data = json.dumps(message).encode()
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.send(data)


def receive(sock: socket.socket) -> tuple[dict | None, list[int]]:
    """One message and its fds; (None, []) at end of stream."""
    data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, 4)
    if not data:
        for fd in fds:
            os.close(fd)
        return None, []
    return json.loads(data), fds


# --- the zygote process --------------------------------------------------------------------

def main(argv: list[str]) -> None:
    fd, launcher_pid = int(argv[1]), int(argv[2])
    die_with_parent(launcher_pid)  # while preloading there is nothing to clean up
    become_subreaper()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=fd)
    verdict = preload()
    # From now on a dead launcher must not kill us outright: its end of the socket closes
    # and _serve tears the whole tree down first.
    keep_on_parent_death(launcher_pid)
    try:
        send(sock, verdict)
    except OSError:  # the launcher stopped while we were preloading
        os._exit(0)
    _serve(sock)
    os._exit(0)  # skip interpreter teardown: with torch loaded it costs most of a second


def preload() -> dict:
    """Import the heavy modules once, then judge whether forking from here is safe."""
    names = [n.strip() for n in os.environ.get(PRELOAD_ENV, DEFAULT_PRELOAD).split(",")
             if n.strip()]
    for name in names:
        try:
            __import__(name)
        except BaseException as e:  # noqa: B036 - any failure just means "spawn instead"
            return _ready(False, f"preloading {name} failed: {type(e).__name__}: {e}")
    threads = _os_threads()
    if threads != 1 or threading.active_count() != 1:
        return _ready(False, f"the preloaded process runs {threads} OS threads "
                      f"({threading.active_count()} Python threads); fork needs exactly one")
    torch = sys.modules.get("torch")
    if torch is not None and getattr(torch, "cuda", None) is not None:
        if torch.cuda.is_initialized():
            return _ready(False, "CUDA is already initialised in the preloaded process")
    return _ready(True, "")


def _ready(safe: bool, reason: str) -> dict:
    return {"op": "ready", "fork_safe": safe, "reason": reason}


def _os_threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def _serve(sock: socket.socket) -> None:
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    workers: dict[int, int] = {}
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    sel.register(wake_r, selectors.EVENT_READ)
    own_fds = (sock.fileno(), wake_r, wake_w, sel.fileno())  # closed in every worker
    try:
        while True:
            for key, _ in sel.select(timeout=1.0):
                if key.fileobj is sock:
                    message, fds = receive(sock)
                    if message is None:
                        return
                    pid = _fork_worker(message, fds, own_fds)
                    workers[pid] = message["local_rank"]
                    send(sock, {"op": "forked", "local_rank": message["local_rank"], "pid": pid})
                else:
                    try:
                        os.read(wake_r, 4096)
                    except BlockingIOError:
                        pass
            _reap(sock, workers)
    except (BrokenPipeError, ConnectionResetError):
        return
    finally:
        kill_descendants(list(workers), TEARDOWN_WAIT)


def kill_descendants(groups: list[int], timeout: float) -> None:
    """SIGKILL the workers' process groups and every process below this one, reaping as
    we go, until none is left or `timeout` passes. Orphans of the killed are re-parented
    to us (subreaper) and so are found by the next round."""
    deadline = time.monotonic() + timeout
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass
    while True:
        below = _descendants(os.getpid())
        for pid in below:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        reaped = _reap_all()
        if not below and not reaped or time.monotonic() >= deadline:
            return
        if not reaped:
            time.sleep(0.01)


def _reap_all() -> int:
    count = 0
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return count
        if pid == 0:
            return count
        count += 1


def _descendants(root: int) -> list[int]:
    """Live (non-zombie) processes below `root`, from /proc."""
    children: dict[int, list[int]] = {}
    zombies = set()
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(b")", 1)[-1].split()
        if len(fields) < 2:
            continue
        pid = int(name)
        if fields[0] == b"Z":
            zombies.add(pid)
        children.setdefault(int(fields[1]), []).append(pid)
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return [pid for pid in found if pid not in zombies]


def _reap(sock: socket.socket, workers: dict[int, int]) -> None:
    """Collect every dead child; report the workers among them in ONE message, so the
    launcher sees deaths that happened together as one batch (see the root-cause order)."""
    ends = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        if workers.pop(pid, None) is not None:
            ends.append([pid, status])
    if ends:
        send(sock, {"op": "exited", "ends": ends})


def _fork_worker(request: dict, fds: list[int], own_fds: tuple[int, ...]) -> int:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    zygote_pid = os.getpid()
    pid = os.fork()
    if pid == 0:
        _become_worker(request, fds, own_fds, zygote_pid)  # never returns
    try:
        os.setpgid(pid, pid)  # also in the parent, so a group signal can never miss it
    except OSError:
        pass
    for fd in fds:
        os.close(fd)
    return pid


# --- inside a forked worker ----------------------------------------------------------------

def _become_worker(request: dict, fds: list[int], own_fds: tuple[int, ...],
                   zygote_pid: int) -> None:
    code = 1
    try:
        os.setpgid(0, 0)
        die_with_parent(zygote_pid)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for fd in own_fds:
            os.close(fd)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(fds[0], 1)
        os.dup2(fds[1], 2)
        for fd in (devnull, *fds):
            os.close(fd)
        os.chdir(request["cwd"])
        env = request["env"]
        os.environ.clear()
        os.environ.update(env)
        if request.get("cpus"):
            os.sched_setaffinity(0, request["cpus"])
        if request.get("argv"):  # the spawn start method: a fresh interpreter
            os.execvpe(request["argv"][0], request["argv"], env)
        _fresh_stdio()
        _reseed()
        _match_threads(env)
        code = run_target(request["target"], request["is_module"], request["args"])
    except BaseException:  # noqa: B036 - the boot itself failed; say why and exit 1
        try:
            os.write(2, traceback.format_exc().encode())
        except OSError:
            pass
    finally:
        os._exit(code)


def _fresh_stdio() -> None:
    """New stdio objects on fds 0-2, unbuffered as under `python -u` (torchrun's workers)."""
    encoding = sys.stdout.encoding if sys.stdout is not None else "utf-8"
    out = open(1, "wb", buffering=0, closefd=False)
    err = open(2, "wb", buffering=0, closefd=False)
    sys.stdin = sys.__stdin__ = open(0, closefd=False)
    sys.stdout = sys.__stdout__ = io.TextIOWrapper(
        out, encoding=encoding, errors="strict", write_through=True)
    sys.stderr = sys.__stderr__ = io.TextIOWrapper(
        err, encoding=encoding, errors="backslashreplace", line_buffering=True,
        write_through=True)


def _reseed() -> None:
    """Give each worker its own random streams, as a fresh interpreter would have.

    A fresh process seeds Python's `random`, numpy's global generator and torch's default
    generator from the OS; after a fork they would all repeat the zygote's streams, so each
    is reseeded here from os.urandom.
    """
    import random

    random.seed()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        try:
            numpy.random.seed()
        except Exception:  # noqa: BLE001 - a broken numpy must not stop the worker
            pass
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)


def _match_threads(env: dict) -> None:
    """The zygote imported torch with one OpenMP thread; give the worker its own count."""
    torch = sys.modules.get("torch")
    if torch is None:
        return
    try:
        wanted = int(env["OMP_NUM_THREADS"])
    except (KeyError, ValueError):
        wanted = len(os.sched_getaffinity(0))
    if wanted > 0 and torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)


def run_target(value: str, is_module: bool, args: list[str]) -> int:
    """Run a script or module as __main__ with sys.argv set; return the exit code.

    Ends like the interpreter would: non-daemon threads are joined and atexit handlers run;
    an uncaught KeyboardInterrupt ends the process by SIGINT.
    """
    sys.argv = [value, *args]
    if is_module:
        sys.path[0] = os.getcwd()
    else:
        sys.path[0] = os.path.dirname(os.path.realpath(value))
    interrupted = False
    try:
        if is_module:
            runpy.run_module(value, run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(value, run_name="__main__")
        code = 0
    except SystemExit as e:
        code = _exit_code(e.code)
    except KeyboardInterrupt as e:
        _print_exception(e)
        code, interrupted = 130, True
    except BaseException as e:  # noqa: B036 - report like the interpreter, exit 1
        _print_exception(e)
        code = 1
    code = _finish(code)
    if interrupted:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    return code


def _exit_code(value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return value & 0xFF
    print(value, file=sys.stderr)
    return 1


_OWN_FRAMES = {__file__, runpy.__file__, "<frozen runpy>"}


def _print_exception(e: BaseException) -> None:
    """The traceback as the interpreter prints it, starting at the user's code."""
    tb = e.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename in _OWN_FRAMES:
        tb = tb.tb_next
    sys.excepthook(type(e), e.with_traceback(tb), tb)


def _finish(code: int) -> int:
    try:
        for thread in threading.enumerate():
            if thread is not threading.current_thread() and not thread.daemon:
                thread.join()
        atexit._run_exitfuncs()
    except SystemExit as e:
        code = _exit_code(e.code)
    except BaseException as e:  # noqa: B036
        _print_exception(e)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    return code


if __name__ == "__main__":
    main(sys.argv)
