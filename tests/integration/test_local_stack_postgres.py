"""The local stack with MLflow on PostgreSQL (`stack.py up --db postgres`, `make up DB=postgres`) for real, in a
temporary state folder on free ports: `up` starts five healthy parts, PostgreSQL on a Unix socket in its 0700 data
folder and no TCP port (as the `postgres` user under root), and MLflow's experiments land in its database `mlflow`;
a second `up` starts nothing; a killed PostgreSQL is restarted together with MLflow, its data kept; `down` leaves
none of the stack's processes (the database server's included) and deletes the data folder.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rigpose_testing import Stack

from rigpose.cluster.processes import alive, descendants, stop_processes

PARTS = ["s3", "postgres", "mlflow", "ray-head", "ray-node2"]
HAS_POSTGRES = bool(shutil.which("postgres") or glob.glob("/usr/lib/postgresql/*/bin/postgres"))
pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.skipif(not HAS_POSTGRES, reason="no PostgreSQL server programs on PATH or in "
                                 "/usr/lib/postgresql/*/bin (apt-get install postgresql)")]


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    s = Stack(db="postgres")
    try:
        yield s
    finally:
        left = s.processes()
        s.run("down")
        stop_processes(s.processes() | left, timeout_s=5.0)  # what a failed test left, by pid
        shutil.rmtree(s.root, ignore_errors=True)


def _server_args(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def _data_dir(stack: Stack) -> Path:
    """The data folder the running server was started on (its -D), read from /proc, not from the script."""
    args = _server_args(stack.records()["postgres"]["pid"])
    return Path(args[args.index("-D") + 1])


def _tcp_listening(pids: set[int]) -> set[int]:
    """Those of `pids` holding a listening TCP socket (any address)."""
    inodes = {line.split()[9] for table in ("/proc/net/tcp", "/proc/net/tcp6")
              for line in Path(table).read_text().splitlines()[1:] if line.split()[3] == "0A"}
    found = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            link = os.readlink(fd)
            if link.startswith("socket:[") and link[8:-1] in inodes:
                found.add(pid)
    return found


def _experiments_in_database(folder: Path) -> set[str]:
    """The experiment names in the database `mlflow`, read through the server's socket."""
    import psycopg2

    with psycopg2.connect(host=str(folder), user="rigpose", dbname="mlflow", connect_timeout=5) as conn, \
            conn.cursor() as cur:
        cur.execute("SELECT name FROM experiments")
        names = {row[0] for row in cur.fetchall()}
    conn.close()
    return names


def _mlflow(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


@pytest.mark.timeout(420)
def test_up_with_postgres_serves_mlflow_from_a_socket_only_database(stack: Stack) -> None:
    result = stack.run("up")
    assert result.returncode == 0, result.stdout + result.stderr
    assert stack.states(result.stdout, PARTS) == dict.fromkeys(PARTS, "started"), result.stdout
    server = stack.records()["postgres"]["pid"]
    args, folder = _server_args(server), _data_dir(stack)
    assert "listen_addresses=" in args and args[args.index("-k") + 1] == str(folder), args
    assert folder.stat().st_mode & 0o777 == 0o700
    if os.geteuid() == 0:  # PostgreSQL refuses root: the server runs as the postgres user, which owns its data
        assert folder.stat().st_uid == pwd.getpwnam("postgres").pw_uid
        assert Path(f"/proc/{server}/status").read_text().split("Uid:")[1].split()[1] != "0"
    assert not _tcp_listening({server} | descendants(server))

    env = stack.env()
    _mlflow(env["MLFLOW_TRACKING_URI"]).create_experiment("stored-in-postgres")
    assert "stored-in-postgres" in _experiments_in_database(folder)
    assert not (stack.state / "mlflow" / "mlflow.db").exists()  # no sqlite store beside it


@pytest.mark.timeout(120)
def test_a_second_up_with_postgres_starts_nothing(stack: Stack) -> None:
    before = stack.records()
    result = stack.run("up")
    assert result.returncode == 0, result.stdout + result.stderr
    assert stack.states(result.stdout, PARTS) == dict.fromkeys(PARTS, "running"), result.stdout
    assert stack.records() == before
    status = stack.run("status")
    assert status.returncode == 0 and stack.states(status.stdout, PARTS) == dict.fromkeys(PARTS, "ok"), status.stdout


@pytest.mark.timeout(300)
def test_a_dead_postgres_is_restarted_with_mlflow_and_keeps_its_data(stack: Stack) -> None:
    before = stack.records()
    os.kill(before["postgres"]["pid"], 9)  # its other processes exit when they see it gone
    result = stack.run("up")
    assert result.returncode == 0, result.stdout + result.stderr
    assert stack.states(result.stdout, PARTS) == {"s3": "running", "postgres": "restarted", "mlflow": "restarted",
                                                  "ray-head": "running", "ray-node2": "running"}, result.stdout
    after = stack.records()
    assert all(after[k] == before[k] for k in ("s3", "ray-head", "ray-node2"))
    uri = stack.env()["MLFLOW_TRACKING_URI"]
    assert _mlflow(uri).get_experiment_by_name("stored-in-postgres") is not None  # the restarted MLflow reads it
    _mlflow(uri).create_experiment("after-the-restart")
    assert {"stored-in-postgres", "after-the-restart"} <= _experiments_in_database(_data_dir(stack))


@pytest.mark.timeout(180)
def test_down_stops_the_database_server_too_and_deletes_its_data(stack: Stack) -> None:
    server = stack.records()["postgres"]["pid"]
    folder = _data_dir(stack)
    ours = stack.processes() | {server} | descendants(server)
    assert len(descendants(server)) >= 4  # checkpointer, background writer, walwriter, autovacuum launcher, ...
    result = stack.run("down")
    assert result.returncode == 0, result.stdout + result.stderr
    assert stack.states(result.stdout, PARTS) == dict.fromkeys(PARTS, "stopped"), result.stdout
    assert not [p for p in ours if alive(p)], result.stdout
    assert not stack.processes()
    assert not folder.exists()
    status = stack.run("status")
    assert status.returncode == 1 and stack.states(status.stdout, PARTS) == dict.fromkeys(PARTS, "down")
