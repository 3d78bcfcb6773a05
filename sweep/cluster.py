"""The Ray lifecycle of a driver: the workers' environment, checking a cluster's address, connecting to a
cluster or starting a local instance (and stopping everything it started, even half-started), noticing a
dead local Ray, and keeping Ray's own output off the terminal while it runs; SIGTERM handled as Ctrl-C.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

from .errors import ClusterError, RayGone
from .task import PRELOAD_VAR

# BLAS inside a task stays single-threaded: one task per core is the parallelism
SINGLE_THREAD = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


def runtime_env(address: str | None) -> dict:
    """Environment of the workers: single-threaded BLAS; on a cluster also the
    ``sweep`` package itself (workers need not have linflow installed)."""
    env_vars = dict(SINGLE_THREAD)
    env = {"env_vars": env_vars}
    if address:
        env["py_modules"] = [str(Path(__file__).resolve().parent)]
        env["excludes"] = ["*.zarr", "runs/", "__pycache__/"]
    return env


ADDRESS_SECONDS = 5.0  # answering at address: connecting, and a Ray server's first gRPC frame


# an HTTP/2 server (gRPC: Ray's GCS and its Ray Client server) sends a SETTINGS frame first (RFC 9113 §3.4)
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def check_address(address: str | None) -> None:
    """Check a named cluster's address before anything is created, in seconds (ClusterError naming
    ``address``): its form (``HOST:PORT``, the GCS, or ``ray://HOST:PORT``, Ray Client), that Ray
    Client is installed for ``ray://``, and that the port answers as a Ray server does (gRPC) —
    ray.init would otherwise retry for minutes, or wait forever on a port that is not Ray's.
    ``auto``, ``local`` and unnamed (a local instance) are not checked."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if not address or address in ("auto", "local"):
        return
    scheme, _, hostport = address.rpartition("://")
    host, _, port = hostport.rstrip("/").rpartition(":")
    if scheme in ("http", "https"):
        raise ClusterError(
            "address",
            f"{address} is the job-submission (dashboard) address: submit the run "
            f"with `ray job submit --address {address} -- linflow run …`, or drive the "
            f"cluster from here with ray://{host or 'HOST'}:10001 (Ray Client) or "
            f"{host or 'HOST'}:6379 (the GCS)",
        )
    if scheme not in ("", "ray") or not host or not port.isdigit() or "/" in host:
        raise ClusterError(
            "address",
            f"expected HOST:PORT (the GCS, e.g. 10.0.0.1:6379) or ray://HOST:PORT "
            f"(Ray Client, e.g. ray://10.0.0.1:10001), got {address!r}",
        )
    if scheme == "ray":
        import importlib.util

        if importlib.util.find_spec("grpc") is None:
            raise ClusterError("address", "ray:// (Ray Client) needs grpcio: python3 -m pip install 'ray[client]'")
    try:
        conn = socket.create_connection((host, int(port)), timeout=ADDRESS_SECONDS)
    except OSError as exc:
        raise ClusterError(
            "address", f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}); is it up?"
        ) from None
    with conn:
        if os.environ.get("RAY_USE_TLS", "0").lower() not in ("0", "false", ""):
            return  # TLS: no cleartext gRPC to probe
        try:
            conn.sendall(_H2_PREFACE)
            head = b""
            while len(head) < 9 and (more := conn.recv(9 - len(head))):
                head += more
        except OSError:
            head = b""
    if len(head) < 9 or head[3] != 4:  # no answer in time, or no SETTINGS frame
        raise ClusterError(
            "address",
            f"{address} is open but does not answer as Ray does (gRPC) within "
            f"{ADDRESS_SECONDS:.0f} s; is it the GCS port (6379) or the Ray Client port (10001)?",
        )


# a local instance's workers import sweep.task before they take work (Ray's preload_python_modules), and with
# this variable in their environment (:func:`preload`) load the kernels named in it there and then: while
# ray.init is still starting Ray's other processes, not in the run's first tasks
PRELOAD_MODULE = "sweep.task"


def preload(kernels) -> str:
    """The value of PRELOAD_VAR: this process's own ``sweep`` package (a worker whose preloaded copy is another
    one sets it aside: :func:`sweep.task._preload`) and the kernels to load (models: :data:`sweep.task.KERNELS`)."""
    return json.dumps({"package": str(Path(__file__).resolve().parent), "kernels": sorted(set(kernels))})


def connect(address: str | None = None, workers: int | None = None, kernels=("layerwise",)) -> bool:
    """Attach to the Ray cluster at ``address`` (or RAY_ADDRESS), else start a local instance with
    ``workers`` CPUs (default: all), whose workers — Ray starts one per CPU ahead of time — import the
    task and load ``kernels`` as soon as they start (:data:`PRELOAD_VAR`). Returns True when this call
    started Ray (and should stop it).

    The caller's SIGTERM and SIGINT handlers stay in force (ray.init replaces SIGTERM's with its own
    ``sys.exit``, and its core adds a stack dump). Interrupted or failed half-way — a signal while Ray
    starts — it stops whatever it had started before it re-raises."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    # log_to_driver off: the workers' and raylet's logs stay in Ray's session folder, not on our stderr
    quiet = {"logging_level": logging.ERROR, "configure_logging": True, "log_to_driver": False}
    handlers = _signal_handlers()
    ours = {p.pid for p in ray_descendants()}
    # the driver's core would add a handler that dumps a stack on SIGTERM, then ends the process
    # before the caller's handler can release anything (RAY_DISABLE_FAILURE_SIGNAL_HANDLER, read by
    # ray.init; a local instance's processes inherit it, and Ray still reports their deaths)
    env_vars = {"RAY_DISABLE_FAILURE_SIGNAL_HANDLER": "1"}
    if not address:
        env_vars[OWNER_VAR] = str(os.getpid())  # marks the local instance's processes as this driver's
        # a local instance inherits the driver's environment: set it for the Ray processes started here, so
        # the workers Ray starts ahead of time (default environment) serve the tasks without a cold start
        env_vars.update(runtime_env(None)["env_vars"])
        env_vars[PRELOAD_VAR] = preload(kernels)
    saved = {k: os.environ.get(k) for k in env_vars}
    os.environ.update(env_vars)
    try:
        if address:
            ray.init(address=address, runtime_env=runtime_env(address), **quiet)
        else:
            # "local": a new instance, never a cluster that another process announced in Ray's temp folder
            ray.init(
                address="local",
                num_cpus=workers,
                include_dashboard=False,
                _system_config={"preload_python_modules": [PRELOAD_MODULE]},
                **quiet,
            )
        return True
    except BaseException as exc:
        stop_ray(keep=ours)
        _restore(handlers)
        caller = handlers.get(signal.SIGTERM)
        if isinstance(exc, SystemExit) and exc.code == signal.SIGTERM and callable(caller):
            caller(signal.SIGTERM, None)  # ray.init's own SIGTERM handler (sys.exit) ran: the caller's decides
        raise
    finally:
        _restore(handlers)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _signal_handlers() -> dict:
    """The Python handlers of SIGTERM and SIGINT (only the main thread has them)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}


def _restore(handlers: dict) -> None:
    for sig, handler in handlers.items():
        if callable(handler):  # the caller's own (a default or ignore setting came from outside Python)
            signal.signal(sig, handler)


_RAY_PROCESS = ("ray::", "/ray/core/src/", "/ray/_private/", "/ray/dashboard/", "/ray/autoscaler/")


OWNER_VAR = "LINFLOW_RAY_OWNER"  # in the environment of a local Ray instance's processes: the driver's pid


def ray_descendants() -> list:
    """Ray's processes that this process started (raylet, GCS, agents, workers, monitors): its
    descendants, and those a signal to the whole group orphaned (their environment names this driver)."""
    import psutil

    me = str(os.getpid())
    found = {}
    for p in psutil.Process().children(recursive=True):
        try:
            if any(k in " ".join(p.cmdline()) for k in _RAY_PROCESS):
                found[p.pid] = p
        except psutil.Error:
            continue
    for p in psutil.process_iter():
        try:
            if p.pid not in found and p.ppid() == 1 and p.environ().get(OWNER_VAR) == me:
                found[p.pid] = p
        except psutil.Error:
            continue
    return list(found.values())


def stop_ray(keep=frozenset(), grace: float = 3.0) -> None:
    """ray.shutdown, then end the Ray processes this process started that are still alive (those of an
    interrupted start, which Ray does not know yet; agents whose raylet is gone): SIGTERM, then SIGKILL."""
    import psutil
    import ray

    left = [p for p in ray_descendants() if p.pid not in keep]  # before the raylet goes, taking the tree
    _end_monitor()
    try:
        ray.shutdown()
    except Exception:  # noqa: BLE001 — Ray half-started or already gone: its processes are ended below
        pass
    for _ in range(3):  # a raylet ended mid-start may have spawned agents after the last look: look again
        left = list({p.pid: p for p in left + ray_descendants() if p.pid not in keep and p.is_running()}.values())
        if not left:
            break
        for p in left:
            try:
                p.terminate()
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(left, timeout=grace)
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass
        left = []


def _end_monitor() -> None:
    """Kill the autoscaler monitor of the local instance this process started, before ray.shutdown: ray.shutdown
    ends the GCS first, then sends the monitor SIGTERM, whose handler reports to that GCS and hangs until
    ray.shutdown kills it a second later — a second added to every run. Killed now it ends at once (it only
    watches the cluster's size; Ray kills it too); ray.shutdown then finds it gone."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    for info in getattr(node, "all_processes", {}).get("monitor", []):
        try:
            if info.process.poll() is None:
                info.process.kill()
                info.process.wait(timeout=1.0)
        except Exception:  # noqa: BLE001 — gone already, or not ours to wait for: ray.shutdown ends it
            pass


def check_local_ray() -> None:
    """RayGone when the raylet or the GCS of the local instance this process started has died."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    for kind in ("raylet", "gcs_server"):
        for info in getattr(node, "all_processes", {}).get(kind, []):
            code = info.process.poll()
            if code is not None:
                raise RayGone(f"Ray stopped mid-run: its {kind} (pid {info.process.pid}) died (exit code {code})")


@contextmanager
def stopped_by_signals():
    """SIGTERM (Slurm, systemd, docker stop, timeout) stops a run as SIGINT (Ctrl-C) does: the first
    of them raises KeyboardInterrupt in the main thread and is listed in the list yielded (exit code
    128 + its number, as a shell reports); the ones after it are ignored, so that stopping (Ray's
    shutdown, the lock's release) is not cut short when a whole process group is signalled."""
    stopping = []
    if threading.current_thread() is not threading.main_thread():
        yield stopping
        return

    def stop(signum, frame):
        if not stopping:
            stopping.append(signum)
            raise KeyboardInterrupt

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stopping
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def stderr_is_fd2() -> bool:
    try:
        return sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        return False


@contextmanager
def ray_output_aside():
    """Ray's C++ core, in this process, writes its errors to file descriptor 2 as well as to its session's
    log files (python-core-driver-*.log): point descriptor 2 at /dev/null while Ray runs, and keep
    sys.stderr (our one-line messages, the progress bar) on the real stderr through a copy of it.
    Ray also prints what its raylet says when it dies (its last log lines, which its session's raylet.out
    holds) to stdout: descriptor 1 points at /dev/null meanwhile too, so that stdout carries linflow's own
    output only (--json: the JSON) and stderr its one line.
    Only when sys.stderr is descriptor 2 (not under a test runner that captures it)."""
    if not stderr_is_fd2():
        yield
        return
    sys.stderr.flush()
    sys.stdout.flush()
    real = os.dup(2)
    out = os.dup(1)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    os.close(null)
    previous = sys.stderr
    sys.stderr = copy = open(
        real,
        "w",
        buffering=1,
        encoding=previous.encoding,
        errors=previous.errors,
        closefd=False,
    )
    try:
        yield
    finally:
        copy.close()
        sys.stderr = previous
        sys.stdout.flush()
        os.dup2(out, 1)
        os.close(out)
        os.dup2(real, 2)
        os.close(real)
