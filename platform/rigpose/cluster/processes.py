"""Our own processes on this machine, found by process id, session, or a marker on their command line, never by
name: what the local stack (`infra/local/stack.py`) uses to tell its services from everyone else's and to stop
exactly them (Linux /proc; no psutil needed).

Why not by name: `ray stop` or `pkill -f ray` stops every Ray on the machine (another engineer's tests, a user's
cluster). Ray's workers rename themselves "ray::..." but stay children of their raylet, and a service started in
its own session keeps that session id in every process it starts, even those reparented after a parent's death.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class ProcessInfo:
    """One process as /proc shows it."""

    pid: int
    ppid: int
    sid: int  # session id: that of its session leader (a service started with start_new_session)
    start_ticks: int  # start time after boot, clock ticks: with the pid, names one process (pids are reused)
    cmdline: str


def _stat_fields(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name (which may hold spaces and parentheses): [0] is the state."""
    return (PROC / str(pid) / "stat").read_text().rpartition(")")[2].split()


def process_info(pid: int) -> ProcessInfo | None:
    """The process `pid`, or None when it is gone (or a zombie: it has exited, only its parent's reaping is left)."""
    try:
        fields = _stat_fields(pid)
        cmdline = (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, IndexError):
        return None
    if fields[0] == "Z":
        return None
    return ProcessInfo(pid, int(fields[1]), int(fields[3]), int(fields[19]), cmdline.strip())


def process_table() -> dict[int, ProcessInfo]:
    """Every live process we can read, by pid."""
    table: dict[int, ProcessInfo] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (info := process_info(int(entry.name))) is not None:
            table[info.pid] = info
    return table


def alive(pid: int, start_ticks: int | None = None) -> bool:
    """True when `pid` runs (not a zombie) and, with `start_ticks`, is still the process that started then."""
    info = process_info(pid)
    return info is not None and (start_ticks is None or info.start_ticks == start_ticks)


def descendants(pid: int, table: dict[int, ProcessInfo] | None = None) -> set[int]:
    """Pids of every process below `pid` (children, their children, ...), not `pid` itself."""
    table = process_table() if table is None else table
    found: set[int] = set()
    parents = {pid}
    while parents:
        parents = {p for p, info in table.items() if info.ppid in parents and p not in found}
        found |= parents
    return found


def session_members(sid: int, table: dict[int, ProcessInfo] | None = None) -> set[int]:
    """Pids of the processes of session `sid` (a service started with `start_new_session=True` and all it started,
    reparented or not, unless they made sessions of their own)."""
    table = process_table() if table is None else table
    return {p for p, info in table.items() if info.sid == sid}


def processes_with(*markers: str, table: dict[int, ProcessInfo] | None = None) -> set[int]:
    """Pids of the processes whose command line holds one of `markers` (e.g. a Ray node's own --temp-dir), and all
    their descendants; never this process."""
    table = process_table() if table is None else table
    found = {p for p, info in table.items() if any(m in info.cmdline for m in markers)}
    grew = True
    while grew:
        more = {p for p, info in table.items() if info.ppid in found and p not in found}
        found |= more
        grew = bool(more)
    found.discard(os.getpid())
    return found


def stop_processes(pids: set[int], *, timeout_s: float = 30.0) -> set[int]:
    """SIGTERM `pids`, SIGKILL what is left after `timeout_s`; returns the pids still alive at the end."""
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and any(alive(p) for p in pids):
            time.sleep(0.1)
        pids = {p for p in pids if alive(p)}
        if not pids:
            break
    return pids


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when a TCP server could bind `host`:`port` now."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed connection's TIME_WAIT is no owner
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def listeners(port: int) -> set[int]:
    """Pids of the processes (that we can see) holding a listening TCP socket on `port`, any address."""
    inodes: set[str] = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in (PROC / "net" / table).read_text().splitlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and int(cols[1].rpartition(":")[2], 16) == port:  # 0A: LISTEN
                    inodes.add(cols[9])
    if not inodes:
        return set()
    owners: set[int] = set()
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    link = os.readlink(fd)
                    if link.startswith("socket:[") and link[8:-1] in inodes:
                        owners.add(int(entry.name))
                        break
    return owners
