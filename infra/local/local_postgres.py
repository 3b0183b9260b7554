"""PostgreSQL for the local stack's MLflow (`stack.py up --db postgres`): where its programs are, which user runs them,
its data folder (initdb'd once) and the command line of a server that listens on a Unix socket only.

The server listens on no TCP port (listen_addresses=''), only on a socket inside its own 0700 data folder: the user
who owns that folder (and root) can connect, as superuser `rigpose` with no password (`--auth-local=trust`; host
connections are rejected too, `--auth-host=reject`, should TCP ever be switched on). PostgreSQL refuses to run as
root: under root, initdb and the server run as the `postgres` user, and the data folder is then one under /tmp named
after the state folder, since the state folder (root's, 0700) is closed to that user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from rigpose.cluster.processes import process_info

SUPERUSER = "rigpose"
DATABASE = "mlflow"
PORT = 5432  # names the socket file (.s.PGSQL.5432); no TCP port is opened
SOCKET_PATH_MAX = 107  # a Unix socket path has at most 107 bytes
SEARCH = "/usr/lib/postgresql/*/bin"  # Debian's and Ubuntu's packages: one folder per major version
SERVER_USER = "postgres"  # who runs the server when the stack runs as root
INSTALL_HINT = "install PostgreSQL's server (Debian/Ubuntu: apt-get install postgresql)"


class PostgresError(RuntimeError):
    """What stops a PostgreSQL start, with one line for the user."""


@dataclass(frozen=True)
class ServerUser:
    """The account initdb and the server run as."""

    name: str
    uid: int
    gid: int

    def popen_options(self) -> dict[str, Any]:
        """`subprocess.Popen` options that run a program as this user (none when it is this process's user)."""
        if self.uid == os.geteuid():
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def bin_dir() -> Path | None:
    """The folder of `postgres` and `initdb`: on PATH, else the highest version in /usr/lib/postgresql/*/bin."""
    on_path = shutil.which("postgres")
    if on_path and (Path(on_path).parent / "initdb").is_file():
        return Path(on_path).parent
    found = [Path(d) for d in glob.glob(SEARCH) if (Path(d) / "postgres").is_file() and (Path(d) / "initdb").is_file()]
    return max(found, key=_version, default=None)


def _version(folder: Path) -> tuple[int, ...]:
    """(15,) of /usr/lib/postgresql/15/bin, (9, 6) of .../9.6/bin; () when the name is no version."""
    with contextlib.suppress(ValueError):
        return tuple(int(p) for p in folder.parent.name.split("."))
    return ()


def server_user() -> ServerUser:
    """This process's user, or the `postgres` user when that is root (PostgreSQL refuses to run as root)."""
    if os.geteuid() != 0:
        return ServerUser(pwd.getpwuid(os.geteuid()).pw_name, os.geteuid(), os.getegid())
    try:
        entry = pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise PostgresError(f"PostgreSQL refuses to run as root and there is no `{SERVER_USER}` user to run it as: "
                            f"create one (the postgresql package does), or run the stack as a normal user") from None
    if entry.pw_uid == 0:
        raise PostgresError(f"the `{SERVER_USER}` user has uid 0, and PostgreSQL refuses to run as root")
    return ServerUser(entry.pw_name, entry.pw_uid, entry.pw_gid)


def unavailable() -> str | None:
    """What this machine lacks for `--db postgres` (server programs, the `postgres` user under root, MLflow's driver),
    or None."""
    if bin_dir() is None:
        return (f"--db postgres needs PostgreSQL's server programs (postgres, initdb), found neither on PATH nor in "
                f"{SEARCH}: {INSTALL_HINT}, or use the default --db sqlite")
    try:
        server_user()
    except PostgresError as e:
        return str(e)
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return ("--db postgres needs MLflow's PostgreSQL driver psycopg2, not installed in this venv: `make setup` "
                "installs it (psycopg2-binary, in the test extra)")
    return None


def data_dir(state_dir: Path, tag: str) -> Path:
    """The data folder (and the socket's folder): <state>/postgres, or /tmp/rigpose-postgres-<tag> when the server
    runs as another user (root's state folder is closed to it) or the socket's path would be too long there."""
    inside = state_dir / "postgres"
    if os.geteuid() != 0 and len(str(inside / f".s.PGSQL.{PORT}")) <= SOCKET_PATH_MAX:
        return inside
    return Path("/tmp") / f"rigpose-postgres-{tag}"


def is_ours(folder: Path, user: ServerUser) -> bool:
    """True when `folder` is a folder (not a link) owned by `user`."""
    try:
        info = folder.lstat()
    except FileNotFoundError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == user.uid


def ensure_data_dir(folder: Path, user: ServerUser, log: IO[bytes]) -> None:
    """Create `folder` (0700, owned by `user`) and initdb it once (output into `log`); PostgresError when it is
    someone else's or initdb fails."""
    if not folder.exists() and not folder.is_symlink():
        folder.mkdir(mode=0o700)
        if user.uid != os.geteuid():
            os.chown(folder, user.uid, user.gid)
    if not is_ours(folder, user):
        raise PostgresError(f"{folder} exists and is not a folder of user {user.name}: it is not this stack's, "
                            "remove it or move it away")
    folder.chmod(0o700)  # PostgreSQL refuses a data folder others can read
    if (folder / "PG_VERSION").exists():
        return
    bin_folder = bin_dir()
    if bin_folder is None:
        raise PostgresError(f"no PostgreSQL server programs found: {INSTALL_HINT}")
    command = [str(bin_folder / "initdb"), "-D", str(folder), "-U", SUPERUSER, "--auth-local=trust",
               "--auth-host=reject", "-E", "UTF8", "--no-locale"]
    log.write(f"==== {' '.join(command)}\n".encode())
    log.flush()
    done = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          cwd=folder.parent, env=server_env(), timeout=180, check=False, **user.popen_options())
    log.write(done.stdout)
    log.flush()
    if done.returncode != 0:
        end = "\n".join(done.stdout.decode(errors="replace").splitlines()[-10:])
        raise PostgresError(f"initdb of {folder} exited with code {done.returncode}:\n{end}")


def clear_stale_lock(folder: Path, log: IO[bytes], *, wait_s: float = 10.0) -> None:
    """Wait for an exited server named in `folder`'s postmaster.pid to be reaped; remove its lock files if it stays
    a zombie.

    PostgreSQL takes a pid that still answers kill(pid, 0) for a running server (its data folder's and its socket's
    lock files), and a killed server whose parent had exited stays a zombie until the system reaps it (up to ~2 s on
    some machines): a restart right after a crash would refuse to start. A live process under that pid is left alone.
    """
    lock = folder / "postmaster.pid"
    try:
        pid = int(lock.read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return
    deadline = time.monotonic() + wait_s
    while process_info(pid) is None and Path(f"/proc/{pid}").exists():  # a zombie
        if time.monotonic() > deadline:
            log.write(f"==== removing the lock files of server pid {pid} (exited, never reaped)\n".encode())
            log.flush()
            lock.unlink(missing_ok=True)
            (folder / f".s.PGSQL.{PORT}.lock").unlink(missing_ok=True)
            return
        time.sleep(0.2)


def server_command(folder: Path, cluster_name: str) -> list[str]:
    """`postgres` on the data folder `folder`, listening on a socket there only; `cluster_name` is in the title of
    every server process (how the stack finds those its session does not hold: each calls setsid)."""
    bin_folder = bin_dir()
    if bin_folder is None:
        raise PostgresError(f"no PostgreSQL server programs found: {INSTALL_HINT}")
    return [str(bin_folder / "postgres"), "-D", str(folder), "-p", str(PORT), "-k", str(folder),
            "-c", "listen_addresses=", "-c", "unix_socket_permissions=0700", "-c", f"cluster_name={cluster_name}"]


def server_env() -> dict[str, str]:
    """This environment without libpq's settings (PGDATA, PGPORT, ...: the stack names its own) and the stack's
    keys and token (the database needs none of them)."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("PG", "AWS_", "RAY_", "MLFLOW_"))}


def connect(folder: Path, dbname: str = DATABASE, *, timeout_s: int = 3) -> Any:
    """A psycopg2 connection through the socket in `folder` (psycopg2.OperationalError when none answers)."""
    import psycopg2

    return psycopg2.connect(host=str(folder), port=PORT, user=SUPERUSER, dbname=dbname, connect_timeout=timeout_s)


def create_database(folder: Path) -> None:
    """Create the database `mlflow` when the server answers without it (nothing when it is not up yet)."""
    import psycopg2

    try:
        conn = connect(folder, "postgres")
    except psycopg2.OperationalError:
        return
    try:
        conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        conn.close()


def remove_data_dir(folder: Path, user: ServerUser | None) -> None:
    """Delete the data folder when it is the server user's (never a link or someone else's folder)."""
    if user is not None and is_ours(folder, user):
        shutil.rmtree(folder, ignore_errors=True)
