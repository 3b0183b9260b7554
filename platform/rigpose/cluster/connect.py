"""Connecting to Ray: an existing cluster ($RAY_ADDRESS or an address given) or a local Ray of our own, and what of
Ray's output reaches the terminal (only rigpose's own lines unless `--verbose`)."""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Callable

#: what every line rigpose prints on purpose (driver or worker) starts with; quiet mode forwards only these
MARK = "[rigpose]"
#: set to "1" (by `rigpose --verbose`) to see Ray's and Ray Data's own logs, as Ray prints them
VERBOSE_ENV = "RIGPOSE_VERBOSE"

_OWN_ADDRESS: str | None = None  # $RAY_ADDRESS as we set it for our own local Ray (not a user's choice)
_sink: Callable[[str], None] | None = None  # where forwarded worker lines go (None: stdout)


def verbose() -> bool:
    """True when Ray's own logs should be shown (`rigpose --verbose`, or RIGPOSE_VERBOSE=1)."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0", "false")


def set_worker_line_sink(sink: Callable[[str], None] | None) -> None:
    """Send the rigpose lines forwarded from Ray workers to `sink` (e.g. a progress display); None = stdout."""
    global _sink
    _sink = sink


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def shutdown_ray() -> None:
    """`ray.shutdown()`, and drop the $RAY_ADDRESS that `init_ray` set for a local Ray of this process: a process
    started afterwards would inherit the address of a Ray that is gone and wait for its GCS forever."""
    global _OWN_ADDRESS
    import ray

    ray.shutdown()
    if _OWN_ADDRESS is not None and os.environ.get("RAY_ADDRESS") == _OWN_ADDRESS:
        os.environ.pop("RAY_ADDRESS")
    _OWN_ADDRESS = None


def init_ray(address: str | None) -> None:
    """Connect to `address` or $RAY_ADDRESS (set inside `ray job submit`), else start a local Ray (with its
    dashboard, which also serves the state API that Ray Train's placement-group cleaner polls).

    The local Ray oversubscribes logical CPUs (max(4, cores)): on a 2-core machine, 2 workers plus Ray Data's
    tasks would otherwise wait forever for resources. It never attaches to another Ray on the machine: code that
    looks a cluster up by itself (the state API in Ray Train's placement-group cleaner, `ray.init()` without an
    address) otherwise finds every Ray's GCS and fails with "Found multiple active Ray instances", or picks the
    one `ray start` recorded last. So $RAY_API_SERVER_ADDRESS names our dashboard while Ray starts (its
    processes inherit it) and $RAY_ADDRESS names our GCS once it runs (this process; Ray Data's hanging-task
    detector asks the state API from here). `shutdown_ray` (or a later `init_ray`) drops that $RAY_ADDRESS again.
    """
    global _OWN_ADDRESS
    import ray

    if ray.is_initialized():
        return
    quiet = not verbose()
    if quiet:
        quiet_driver_logs()
    env_address = os.environ.get("RAY_ADDRESS")
    if _OWN_ADDRESS is not None:  # left by an earlier local Ray of this process, now gone
        if env_address == _OWN_ADDRESS:
            env_address = None
            os.environ.pop("RAY_ADDRESS", None)
        _OWN_ADDRESS = None
    address = address or env_address
    if address:
        ray.init(address=address, log_to_driver=True, logging_level=logging.WARNING if quiet else logging.INFO)
    else:
        port = _free_port()
        before = os.environ.get("RAY_API_SERVER_ADDRESS")
        os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"  # copied by the Ray processes started now
        try:
            ray.init(address="local", num_cpus=max(4, os.cpu_count() or 1), include_dashboard=True,
                     dashboard_host="127.0.0.1", dashboard_port=port, log_to_driver=True, configure_logging=False)
        finally:  # not for this process: `rigpose submit` reads it, and nothing would reset it at ray.shutdown()
            if before is None:
                os.environ.pop("RAY_API_SERVER_ADDRESS", None)
            else:
                os.environ["RAY_API_SERVER_ADDRESS"] = before
        _OWN_ADDRESS = ray.get_runtime_context().gcs_address
        os.environ["RAY_ADDRESS"] = _OWN_ADDRESS
    if quiet:
        _quiet_ray_data()
        _forward_only_rigpose_lines()


def session_logs_dir() -> str:
    """The logs folder of the Ray session this process is connected to (not /tmp/ray/session_latest: with two
    Rays on one machine that is whichever started last)."""
    try:
        from ray._private import worker

        return os.path.join(worker._global_node.get_session_dir_path(), "logs")
    except Exception:  # not connected, or a Ray without this private API
        return "/tmp/ray/session_latest/logs"


def quiet_driver_logs() -> None:
    """Ray's and MLflow's INFO/WARNING chatter on the driver (token auth notice, DB migrations) off the console."""
    for name in ("ray", "mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING if name == "mlflow" else logging.ERROR)
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")


def _quiet_ray_data() -> None:
    """Ray Data's console handler (execution plans, "execution finished", progress-bar notices) off; its
    ray-data.log file in the session folder keeps everything. (Its progress bars stay on a terminal, e.g. for
    `rigpose lift`; training turns them off for its own bar.)"""
    from ray.data import DataContext

    DataContext.get_current().verbose_stats_logs = False
    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setLevel(logging.ERROR)


def _forward_only_rigpose_lines() -> None:
    """Of what Ray workers and actors print, forward only rigpose's own lines (without Ray's "(pid=...)" prefix).

    Ray forwards every worker's stdout/stderr to the driver (`log_to_driver`): its Train controller's and Data's
    INFO logs, deprecation notices, C++ warnings. Turning that off would also hide the lines rigpose's workers
    print on purpose, so the driver's handler is replaced by a filter. Uses Ray's log dispatcher (private API):
    when it is missing, Ray's own printing is left as it is.
    """
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return

    def handle(data: dict) -> None:
        for line in data.get("lines", ()):
            if line.startswith(MARK):
                if _sink is not None:
                    _sink(line)
                else:
                    sys.stdout.write(line + "\n")
                    sys.stdout.flush()

    if not any(name == "ray_print_logs" for name, _ in getattr(dispatcher, "handlers", [])):
        return
    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", handle)
