"""The warm stage runner: one process per local workflow run imports torch, transformers, TRL, peft and
GEPA once, and forks a child for every `fst <stage>` job, which starts with all of them imported.

Every job of a run would otherwise spend seconds importing the same libraries (TRL alone several),
which on the CPU default is a fifth of a short model stage. The child is an ordinary process: it
gets the job's argv, working directory, environment and standard streams (passed over the socket, so
its output lands in the job's own log), runs the stage exactly as `fst` would, and its exit status
becomes the job's. Results are the same as in a fresh process (tests/unit/test_warm.py compares
them): nothing numeric happens in the server before it forks, so each child starts torch's thread
pool and random state afresh.

Snakemake starts the server in `onstart` for runs whose jobs execute on this machine in this
environment, exports its socket in FST_WARM_RUNNER, and stops it at the end. The `fst` command tries
the socket and otherwise runs the stage in its own process: a cluster job, a job of another
interpreter or PYTHONPATH, a server that is gone, or FST_WARM_RUNNER=off.

Written by hand because no maintained library does this: multiprocessing's forkserver preloads
modules too, but lives and dies with one parent process, and every Snakemake job is its own parent.
Only Linux (pidfd, SCM_RIGHTS); elsewhere `fst` runs every stage in its own process.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass

VARIABLE = "FST_WARM_RUNNER"  # the socket's path; "off" keeps Snakemake from starting a server
_HEADER = struct.Struct("!Q")
_STREAMS = (0, 1, 2)
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# Set in a forked child: provenance records how the stage's process started, and when (the fork).
launched_by_server = False
forked_at: float | None = None


def _identity() -> dict:
    """What a child inherits from the server and must match the client's: interpreter, environment
    (a venv shares its base's interpreter) and import path."""
    return {"python": os.path.realpath(sys.executable), "prefix": sys.prefix,
            "pythonpath": os.environ.get("PYTHONPATH", "")}


# --- client: the `fst` command -----------------------------------------------------------------------


def main() -> None:
    """The `fst` command: the stage in a warm child when a server answers, else in this process."""
    code = run_in_server(sys.argv[1:])
    if code is not None:
        sys.exit(code)
    from fst.cli import main as run_here

    run_here()


def run_in_server(argv: list[str]) -> int | None:
    """Run `fst argv` in a child of the server named by FST_WARM_RUNNER: its exit status, or None when
    no server takes the job (the caller runs it itself)."""
    path = os.environ.get(VARIABLE, "")
    if not path or path == "off" or not hasattr(socket, "send_fds"):
        return None
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.connect(path)
        streams = [fd for fd in _STREAMS if _is_open(fd)]
        body = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "streams": streams,
                           "identity": _identity()}).encode()
        socket.send_fds(connection, [_HEADER.pack(len(body))], streams)
        connection.sendall(body)
        replies = connection.makefile("r")
        first = json.loads(replies.readline() or "{}")
    except (OSError, ValueError):
        connection.close()
        return None
    if "pid" not in first:  # refused (another interpreter or import path): run here
        connection.close()
        return None
    child = first["pid"]
    for signum in _FORWARDED:
        signal.signal(signum, lambda signum, _frame: _signal_group(child, signum))
    try:
        last = json.loads(replies.readline() or "{}")
    except (OSError, ValueError):
        last = {}
    if "exit" not in last:
        print(f"fst: the warm stage runner ({path}) lost the job (child {child})", file=sys.stderr)
        return 1
    return int(last["exit"])


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _signal_group(pid: int, signum: int) -> None:
    """Signal a forked stage and whatever it started (it leads its own process group)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


# --- server --------------------------------------------------------------------------------------------


def preload() -> None:
    """Import what the stages import (nothing is computed: no thread pool, no CUDA context starts)."""
    import gepa  # noqa: F401
    import pandas  # noqa: F401
    import peft  # noqa: F401
    import scipy.stats  # noqa: F401
    import torch
    import transformers  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig  # noqa: F401
    from trl import GRPOConfig, GRPOTrainer  # noqa: F401

    import fst.cli  # noqa: F401
    from fst import evaluate, fast, generation, policy, reflection, rollout, sample_cache, slow  # noqa: F401

    slow._trainer_class()
    for architecture in ("llama", "qwen2", "qwen3"):  # the default model's, and the paper's
        try:
            __import__(f"transformers.models.{architecture}.modeling_{architecture}")
        except ImportError:
            continue
    with open("/proc/self/maps") as maps:  # a forked child could not use a GPU the server opened
        if torch.cuda.is_initialized() or "libcuda.so" in maps.read():
            raise RuntimeError("the warm stage runner's imports opened CUDA; it cannot fork stage processes")


@dataclass(eq=False)
class _Job:
    """A forked stage: its process (leader of its own process group), pidfd and client connection."""

    pid: int
    pidfd: int
    connection: socket.socket
    done: bool = False


def serve(path: str, parent: int, idle_s: float) -> None:
    """Serve jobs on the socket `path` until stopped, until process `parent` (the Snakemake run) is gone,
    or after `idle_s` seconds without a job."""
    for signum in (signal.SIGTERM, signal.SIGHUP):  # killed: still end the children and remove the socket
        signal.signal(signum, lambda *_: sys.exit(0))
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # asking for a GPU must not start CUDA
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)  # jobs that connect while the imports run wait in the backlog
    started = time.perf_counter()
    preload()
    import threading

    print(f"warm stage runner: ready on {path} after {time.perf_counter() - started:.1f} s "
          f"({threading.active_count()} thread(s))", flush=True)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, ("accept", None))
    jobs: list[_Job] = []
    last_activity = time.monotonic()
    try:
        while True:
            for key, _ in selector.select(timeout=1.0):
                last_activity = time.monotonic()
                event, job = key.data
                try:
                    if event == "accept" and _start_job(listener, selector, jobs) == "stop":
                        return
                    if event == "exited":
                        _finish_job(job, selector, jobs)
                    elif event == "client" and not job.done:  # the client is gone (killed): end its stage
                        selector.unregister(job.connection)
                        _signal_group(job.pid, signal.SIGTERM)
                except Exception as error:  # noqa: BLE001 - one job's trouble must not end the others
                    print(f"warm stage runner: {type(error).__name__}: {error}", flush=True)
            if not _alive(parent) or (not jobs and time.monotonic() - last_activity > idle_s):
                return
    finally:
        for job in jobs:
            _signal_group(job.pid, signal.SIGTERM)
        listener.close()
        if os.path.exists(path):
            os.unlink(path)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(path))  # the private folder start() made for the socket


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _receive(connection: socket.socket) -> tuple[dict, list[int]]:
    """A request and the streams it passed (closed again if the request cannot be read whole)."""
    connection.settimeout(30)
    header, fds, _, _ = socket.recv_fds(connection, _HEADER.size, len(_STREAMS))
    try:
        (length,) = _HEADER.unpack(header)
        body = b""
        while len(body) < length:
            chunk = connection.recv(length - len(body))
            if not chunk:
                raise ConnectionError("client closed the connection mid-request")
            body += chunk
        return json.loads(body), fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def _refuse(connection: socket.socket, fds: list[int], why: str) -> None:
    """The client runs the stage itself."""
    with contextlib.suppress(OSError):
        connection.sendall(json.dumps({"refused": why}).encode() + b"\n")
    connection.close()
    for fd in fds:
        os.close(fd)


def _start_job(listener, selector, jobs: list[_Job]) -> str | None:
    connection, _ = listener.accept()
    try:
        request, fds = _receive(connection)
    except (OSError, ValueError, struct.error) as error:
        print(f"warm stage runner: bad request: {error}", flush=True)
        connection.close()
        return None
    if request.get("stop"):
        _refuse(connection, fds, "stopping")
        return "stop"
    if request.get("identity") != _identity():
        _refuse(connection, fds, "another interpreter, environment or PYTHONPATH")
        return None
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        pid = os.fork()
    except OSError as error:
        _refuse(connection, fds, f"fork failed: {error}")
        return None
    if pid == 0:
        others = [key.fileobj for key in selector.get_map().values()]
        _run_child(request, fds, closing=[selector, listener, connection, *others])
    for fd in fds:
        os.close(fd)
    job = _Job(pid, os.pidfd_open(pid), connection)
    jobs.append(job)
    selector.register(job.pidfd, selectors.EVENT_READ, ("exited", job))
    selector.register(connection, selectors.EVENT_READ, ("client", job))
    with contextlib.suppress(OSError):  # a client already gone is noticed by the selector: stage ended
        connection.sendall(json.dumps({"pid": pid}).encode() + b"\n")
    print(f"warm stage runner: job {pid}: fst {' '.join(request['argv'][:1])}", flush=True)
    return None


def _finish_job(job: _Job, selector, jobs: list[_Job]) -> None:
    _, status = os.waitpid(job.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    code = 128 - code if code < 0 else code  # killed by a signal: the shell's convention
    job.done = True
    jobs.remove(job)
    selector.unregister(job.pidfd)
    os.close(job.pidfd)
    with contextlib.suppress(KeyError):  # unregistered already when its client went first
        selector.unregister(job.connection)
    with contextlib.suppress(OSError):
        job.connection.sendall(json.dumps({"exit": code}).encode() + b"\n")
    job.connection.close()


def _run_child(request: dict, fds: list[int], closing: list) -> None:
    """In the forked child: become the job's process and run the stage; never returns."""
    global launched_by_server, forked_at
    forked_at = time.time()
    code = 1
    try:
        _end_with(os.getppid())
        for item in closing:
            if isinstance(item, int):
                os.close(item)
            else:
                item.close()
        for fd, stream in zip(fds, request["streams"], strict=True):
            os.dup2(fd, stream)
            os.close(fd)
        os.setsid()  # its own process group, away from the server's
        for signum in _FORWARDED:
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = ["fst", *request["argv"]]
        launched_by_server = True
        code = _run_stage(request["argv"])
    except BaseException:  # noqa: BLE001 - setting up the child failed: say why in the job's log
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)


def _end_with(server: int) -> None:
    """The stage is killed if the runner dies (Linux's parent-death signal): no orphan keeps a GPU or
    writes outputs of a job Snakemake has given up on."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != server:  # it died before the line above took effect
        os._exit(1)


def _run_stage(argv: list[str]) -> int:
    """`fst argv` as a fresh interpreter would run it, exit status and all."""
    import atexit
    import random
    import threading
    import traceback

    import torch

    random.seed()  # a fresh interpreter seeds from the OS; a fork would share the server's state
    threads = os.environ.get("OMP_NUM_THREADS")  # torch read it when the server imported it
    if threads and threads.isdigit():
        torch.set_num_threads(int(threads))
    from fst.cli import main

    try:
        main(argv)
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 1
        if not isinstance(exit_.code, int | None):
            print(exit_.code, file=sys.stderr)
    except KeyboardInterrupt:
        traceback.print_exc()
        code = 130
    except BaseException:  # noqa: BLE001 - reported like an uncaught exception of a fresh interpreter
        traceback.print_exc()
        code = 1
    threading._shutdown()  # as a fresh interpreter ends: wait for non-daemon threads, then atexit
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    return code


# --- starting and stopping (from the Snakefile) -----------------------------------------------------


def start(log_path: str, idle_s: float = 3600.0) -> str | None:
    """Start a server for this process's workflow run; its socket path (None: FST_WARM_RUNNER=off, or
    not on Linux). The server binds before it imports, so jobs may connect at once."""
    import subprocess
    import tempfile

    if os.environ.get(VARIABLE) == "off" or not hasattr(os, "pidfd_open"):
        return None
    path = os.path.join(tempfile.mkdtemp(prefix="fst-warm-"), "socket")
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    with open(log_path, "ab") as log:
        subprocess.Popen(
            [sys.executable, "-m", "fst.warm", path, str(os.getpid()), str(idle_s)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    deadline = time.monotonic() + 30
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    return path if os.path.exists(path) else None


def stop(path: str | None) -> None:
    """Ask the server on `path` to stop (its running children are ended; none run once Snakemake ends)."""
    if not path or not os.path.exists(path):
        return
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.connect(path)
            body = json.dumps({"stop": True}).encode()
            socket.send_fds(connection, [_HEADER.pack(len(body))], [])
            connection.sendall(body)
    except OSError:
        pass


if __name__ == "__main__":  # `python -m fst.warm`: serve from the module `fst.warm`, not from __main__
    from fst.warm import serve as serve_from_module

    serve_from_module(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))
