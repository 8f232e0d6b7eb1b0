"""Local multi-worker training: N ``python -m trainer.task`` processes on 127.0.0.1.

Each process gets ``TF_CONFIG`` in the Vertex AI layout (one chief, N-1 workers)::

    {"cluster": {"chief": ["127.0.0.1:A"], "worker": ["127.0.0.1:B", ...]},
     "task": {"type": "worker", "index": 0}}

Every output line is prefixed with its task name (``[chief:0] ...``). The launcher
fails fast: when a task exits non-zero, is killed, or never opens its port within
``--start-timeout``, it says which task and why, gives the others ``--grace``
seconds, then SIGKILLs them (MultiWorkerMirroredStrategy waits forever for a
missing peer and ignores SIGTERM). ``--timeout`` bounds the whole job. All tasks
share ``--job-dir``; only the chief keeps an export (``trainer/export.py``).

The tasks share this machine's cores. ``--threads-per-worker N`` gives each
task N threads in TensorFlow's intra-op and inter-op pools
(``TF_NUM_INTRAOP_THREADS``, ``TF_NUM_INTEROP_THREADS``) instead of pools as
large as the machine each (TensorFlow's default, kept without the flag or when
those variables are already set). Measured on 2 cores (README, "Local
multi-worker"): 1 thread each helps MF, NeuMF and BPR (MF at a global batch of
32768: 1.05x -> 1.14x the examples/s of one process); for the GNN it was worse
at a batch of 128 (0.74x -> 0.62x) and better at 512 (0.90x -> 1.05x), so it is
not the default.

Usage::

    python -m trainer.launch_local --workers 2 [--timeout 3600] -- \\
        --config configs/movielens_mf.yaml --data OUT --job-dir JOB
    python -m trainer.task --local-workers 2 --config ... --data OUT --job-dir JOB   # same thing

The pipeline output needs at least N train shards (``--num-shards``).
Exit code: 0 when every task succeeded; the failing task's code (or 1) otherwise.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Sequence

HOST = "127.0.0.1"
_PR_SET_PDEATHSIG = 1


def free_ports(count: int, host: str = HOST) -> list[int]:
    """``count`` distinct ports that were free on ``host`` a moment ago."""
    sockets, ports = [], []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
            ports.append(sock.getsockname()[1])
    finally:
        for sock in sockets:
            sock.close()
    return ports


THREAD_VARIABLES = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")


def thread_pool_size(workers: int, threads_per_worker: int | None) -> int:
    """Threads per task (0: leave TensorFlow's default); ``threads_per_worker`` -1 = cores // workers."""
    if threads_per_worker is None:
        return 0
    if threads_per_worker == -1:
        return max(1, (os.cpu_count() or 1) // max(1, workers))
    if threads_per_worker < 0:
        raise ValueError("threads_per_worker must be >= 0, or -1 for cores // workers")
    return threads_per_worker


def cluster_spec(ports: Sequence[int], host: str = HOST) -> dict[str, list[str]]:
    """The Vertex layout: ``chief`` = first port, ``worker`` = the rest (absent for one task)."""
    cluster = {"chief": [f"{host}:{ports[0]}"]}
    if len(ports) > 1:
        cluster["worker"] = [f"{host}:{port}" for port in ports[1:]]
    return cluster


def task_names(num_tasks: int) -> list[tuple[str, int]]:
    return [("chief", 0)] + [("worker", i) for i in range(num_tasks - 1)]


def tf_configs(ports: Sequence[int], host: str = HOST) -> list[str]:
    """One ``TF_CONFIG`` JSON per task, chief first."""
    cluster = cluster_spec(ports, host)
    return [json.dumps({"cluster": cluster, "task": {"type": t, "index": i}}) for t, i in task_names(len(ports))]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


def _port_open(port: int, host: str = HOST) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class _Task:
    def __init__(self, name: str, port: int, process: subprocess.Popen):
        self.name, self.port, self.process = name, port, process
        self.started = False
        self.reader: threading.Thread | None = None


def _pump(task: _Task, out, lock: threading.Lock) -> None:
    for line in iter(task.process.stdout.readline, ""):
        with lock:
            out.write(f"[{task.name}] {line if line.endswith(chr(10)) else line + chr(10)}")
            out.flush()


def launch(
    trainer_args: Sequence[str],
    workers: int,
    *,
    timeout: float = 3600.0,
    start_timeout: float = 120.0,
    grace: float = 5.0,
    python: str = sys.executable,
    module: str = "trainer.task",
    out=None,
    env: dict[str, str] | None = None,
    threads_per_worker: int | None = None,
) -> int:
    """Runs ``workers`` tasks of ``python -m module trainer_args`` and supervises them.

    Args:
      trainer_args: arguments for ``trainer.task`` (without ``--local-workers``).
      workers: number of tasks (chief + workers - 1).
      timeout: seconds for the whole job; then every task is SIGKILLed.
      start_timeout: seconds for every task to open its port (MWMS's server).
      grace: seconds the others get to exit on their own after a task failed.
      out: where prefixed task output goes (default sys.stdout).
      threads_per_worker: TensorFlow intra-op and inter-op threads per task (None or 0:
        TensorFlow's default; -1: cores // workers). Thread variables already in ``env`` win.

    Returns:
      0 if every task exited 0; the failing task's exit code (1 for a signal or a timeout).
    """
    out = out or sys.stdout
    if workers < 1:
        raise ValueError("workers must be >= 1")
    lock = threading.Lock()

    def say(message: str) -> None:
        with lock:
            out.write(f"[launch_local] {message}\n")
            out.flush()

    ports = free_ports(workers)
    base_env = dict(os.environ if env is None else env)
    base_env["PYTHONUNBUFFERED"] = "1"
    threads = thread_pool_size(workers, threads_per_worker)
    if threads and workers > 1:
        for name in THREAD_VARIABLES:
            base_env.setdefault(name, str(threads))
    tasks: list[_Task] = []
    for (task_type, index), port, tf_config in zip(task_names(workers), ports, tf_configs(ports)):
        child_env = dict(base_env, TF_CONFIG=tf_config)
        process = subprocess.Popen(
            [python, "-m", module, *trainer_args],
            env=child_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            text=True, bufsize=1, preexec_fn=_die_with_parent,
        )
        tasks.append(_Task(f"{task_type}:{index}", port, process))
        # One task runs without a cluster server: nothing to wait for.
        tasks[-1].started = workers == 1
    for task in tasks:
        say(f"{task.name} pid {task.process.pid} on {HOST}:{task.port}")
    for task in tasks:
        task.reader = threading.Thread(target=_pump, args=(task, out, lock), daemon=True)
        task.reader.start()

    def kill_all(reason: str) -> None:
        alive = [t for t in tasks if t.process.poll() is None]
        if alive:
            say(f"{reason}: sending SIGKILL to {', '.join(t.name for t in alive)}")
        for t in alive:
            try:
                t.process.kill()
            except ProcessLookupError:
                pass
        for t in tasks:
            t.process.wait()

    previous = {}

    def on_signal(signum, _frame):
        kill_all(f"launcher got {signal.Signals(signum).name}")
        raise SystemExit(128 + signum)

    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, on_signal)

    started = time.monotonic()
    code = 0
    try:
        failure_at = None
        while True:
            now = time.monotonic()
            for task in tasks:
                if not task.started and task.process.poll() is None and _port_open(task.port):
                    task.started = True
            exits = {t.name: t.process.poll() for t in tasks}
            failed = [t for t in tasks if exits[t.name] not in (None, 0)]
            if failed and failure_at is None:
                first = failed[0]
                code = first.process.returncode if first.process.returncode > 0 else 1
                say(f"FAILED: {first.name} (pid {first.process.pid}) {_describe_exit(first.process.returncode)}; "
                    f"the job cannot continue without it (stopping the others in {grace:.0f} s)")
                failure_at = now
            if all(v is not None for v in exits.values()):
                break
            if failure_at is not None and now - failure_at > grace:
                kill_all("a peer failed")
                break
            if failure_at is None and now - started > start_timeout:
                missing = [t for t in tasks if not t.started]
                if missing:
                    code = 1
                    say(f"FAILED: {', '.join(f'{t.name} ({HOST}:{t.port})' for t in missing)} never started "
                        f"(port not listening after {start_timeout:.0f} s)")
                    kill_all("start-up deadline")
                    break
            if now - started > timeout:
                code = 1
                say(f"FAILED: job still running after --timeout {timeout:.0f} s")
                kill_all("job deadline")
                break
            time.sleep(0.2)
    finally:
        kill_all("launcher exiting")
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for task in tasks:
            if task.reader:
                task.reader.join(timeout=5)
    if code == 0:
        say(f"all {workers} task(s) finished in {time.monotonic() - started:.1f} s")
    return code


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" in argv:
        split = argv.index("--")
        own, trainer_args = argv[:split], argv[split + 1:]
    else:
        own, trainer_args = argv, []
    parser = argparse.ArgumentParser(prog="python -m trainer.launch_local", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, required=True, help="number of tasks: 1 chief + N-1 workers")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds for the whole job (then SIGKILL)")
    parser.add_argument("--start-timeout", type=float, default=120.0, help="seconds for every task to open its port")
    parser.add_argument("--grace", type=float, default=5.0, help="seconds the others get after a task failed")
    parser.add_argument("--threads-per-worker", type=int, default=None,
                        help="TensorFlow intra-op and inter-op threads per task (-1: cores // workers; "
                             "default: TensorFlow's own, pools as large as the machine)")
    args = parser.parse_args(own)
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    if args.threads_per_worker is not None and args.threads_per_worker < -1:
        parser.error("--threads-per-worker must be >= 0, or -1 for cores // workers")
    if not trainer_args:
        parser.error("give the trainer arguments after '--' (e.g. -- --config C --data D --job-dir J)")
    return launch(trainer_args, args.workers, timeout=args.timeout, start_timeout=args.start_timeout, grace=args.grace,
                  threads_per_worker=args.threads_per_worker)


if __name__ == "__main__":
    sys.exit(main())
