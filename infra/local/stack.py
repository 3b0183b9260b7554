"""The local stack: a Ray head and a second Ray node, an MLflow server and an S3 endpoint (moto) on this machine, with
`--db postgres` a PostgreSQL server as MLflow's store, started, checked and stopped as one (`make up` / `make status`
/ `make down`; `python infra/local/stack.py --help`).

`up` starts what is not running and healthy (a second `up` starts nothing; a dead part is stopped and restarted,
the Ray head together with the node that joins it) and prints one health line per part. It writes `<state>/env`,
export lines for `source`: what `rigpose submit` and `ray job submit` need (Jobs API address, token auth with the
token's file, the S3 endpoint and keys, the MLflow URI). `down` stops exactly the processes `up` started: each part
runs in a session of its own, and Ray nodes in their own --temp-dir; found by recorded pid, session, temp folder
and children, never by name (`ray stop` would stop every Ray on the machine).

The state folder (default infra/local/.state/, git-ignored, mode 0700) holds the generated Ray token and fake S3
keys (0600 files, never printed), the env file (0600), logs, stack.json (pids, ports), MLflow's sqlite store or
PostgreSQL's data folder (under /tmp when run by root: `local_postgres`) and the Ray nodes' temp folders. moto keeps
S3 objects in memory, so `down` also deletes what points into them (MLflow's store, Ray's folders); the token and
keys stay for the next `up`.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import local_postgres as pg  # beside this script, as services
from services import PORT_FLAGS, S3, Credentials, Health, Part, Settings, parts

from rigpose.cluster import processes as procs

DEFAULT_STATE = Path(__file__).resolve().parent / ".state"
STATE_FILE = "stack.json"
START_ATTEMPTS = 3  # starts of one part when its failure is transient (Part.transient)
STOP_GRACE_S = 5.0  # SIGTERM to SIGKILL: some Ray processes ignore SIGTERM for long; the stack keeps nothing to save
# stopped first, restarted after it: a node does not rejoin a new head, MLflow keeps no connection to a new database
DEPENDENTS = {"ray-head": ["ray-node2"], "postgres": ["mlflow"]}
#: the command-line option of each setting (what an error about a changed setting tells to change)
OPTION_FLAGS = {**PORT_FLAGS, "bucket": "--bucket", "db": "--db"}


class StackError(RuntimeError):
    """What stops `up`/`down` with one line for the user."""


# ------------------------------------------------------------------------------------------------ state folder
def write_private(path: Path, text: str) -> None:
    """`text` as `path`, mode 0600 from the start (written beside it, then renamed into place)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a left-over temp file keeps its mode through O_CREAT
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def read_state(state_dir: Path) -> dict[str, Any]:
    path = state_dir / STATE_FILE
    return json.loads(path.read_text()) if path.exists() else {"settings": {}, "parts": {}}


def write_state(state_dir: Path, state: dict[str, Any]) -> None:
    write_private(state_dir / STATE_FILE, json.dumps(state, indent=1) + "\n")


@contextlib.contextmanager
def locked(state_dir: Path) -> Iterator[None]:
    """One `up`/`down` at a time per state folder."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    state_dir.chmod(0o700)  # the token and keys are files of its own, but say so on the folder too
    with open(state_dir / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def credentials(settings: Settings) -> Credentials:
    """The state folder's generated credentials, created on first use (fake S3 keys: moto accepts any)."""
    path = settings.state_dir / "credentials.json"
    if not path.exists():
        write_private(path, json.dumps({"aws_access_key_id": "LOCAL" + secrets.token_hex(8).upper(),
                                        "aws_secret_access_key": secrets.token_urlsafe(30)}) + "\n")
    if not settings.token_file.exists():
        write_private(settings.token_file, secrets.token_hex(32))
    keys = json.loads(path.read_text())
    return Credentials(keys["aws_access_key_id"], keys["aws_secret_access_key"], settings.token_file)


def write_env_file(settings: Settings, creds: Credentials) -> None:
    """`<state>/env`: export lines for `source` (0600: it holds the local keys; the token stays in its file)."""
    values = {
        # RAY_ADDRESS is left alone: an http:// RAY_ADDRESS makes ray.init() (a local `rigpose train`) use Ray Client
        "RAY_API_SERVER_ADDRESS": settings.dashboard_url, "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(creds.token_file), "AWS_ENDPOINT_URL": settings.s3_url,
        "AWS_REGION": settings.region, "AWS_DEFAULT_REGION": settings.region,
        "AWS_ACCESS_KEY_ID": creds.aws_access_key_id, "AWS_SECRET_ACCESS_KEY": creds.aws_secret_access_key,
        "MLFLOW_TRACKING_URI": settings.mlflow_url, "RIGPOSE_STACK_BUCKET": settings.bucket}
    lines = ["# RigPose local stack (infra/local/stack.py up): `source` this file. Local-only generated values (fake",
             "# S3 keys of the moto endpoint, the Ray token's file): never commit or share them.",
             *(f"export {k}={shlex.quote(v)}" for k, v in values.items()),
             "unset RAY_AUTH_TOKEN  # it would win over RAY_AUTH_TOKEN_PATH"]
    write_private(settings.env_file, "\n".join(lines) + "\n")


def resolve_settings(state_dir: Path, given: dict[str, Any]) -> Settings:
    """The recorded settings of `state_dir`, with the options `given` (None = not given) over them; StackError
    when an option would change a port of a stack that runs."""
    state = read_state(state_dir)
    recorded = state.get("settings", {})
    names = {f.name for f in fields(Settings)} - {"state_dir"}
    values = {k: v for k, v in recorded.items() if k in names}
    for key, value in given.items():
        if value is None:
            continue
        if state.get("parts") and key in recorded and recorded[key] != value:
            raise StackError(f"the stack in {state_dir} runs with {OPTION_FLAGS.get(key, key)} {recorded[key]}, "
                             f"not {value}: `down` first to change it")
        values[key] = value
    return Settings(state_dir=state_dir, **values)


# -------------------------------------------------------------------------------------------------- processes
def members(part: Part, record: dict[str, Any] | None, table: dict[int, procs.ProcessInfo]) -> set[int]:
    """Every process of `part` now: its recorded process (if still the same one), the members of its session
    (started after it), those naming its markers, and all their children."""
    found: set[int] = set()
    if record:
        pid, ticks = record["pid"], record["start_ticks"]
        if pid in table and table[pid].start_ticks == ticks:
            found.add(pid)
        found |= {p for p in procs.session_members(pid, table) if table[p].start_ticks >= ticks}
    if part.markers():
        found |= procs.processes_with(*part.markers(), table=table)
    for pid in list(found):
        found |= procs.descendants(pid, table)
    found.discard(os.getpid())
    return found


def running(record: dict[str, Any] | None) -> bool:
    return bool(record) and procs.alive(record["pid"], record["start_ticks"])


def check_ports_free(part: Part) -> None:
    """StackError naming the port and its holder when one of `part`'s ports is taken (by something not ours: ours
    were stopped before)."""
    for key, port in part.public_ports().items():
        if procs.port_is_free(port):
            continue
        holders = sorted(procs.listeners(port))
        who = ", ".join(f"pid {p} ({command_of(p)})" for p in holders) or "a process this user cannot see"
        raise StackError(f"{part.name}: port {port} is in use by {who}, which is not this stack's "
                         f"(state {part.settings.state_dir}); stop it, or choose another port with "
                         f"{PORT_FLAGS[key]}")


def command_of(pid: int, width: int = 90) -> str:
    info = procs.process_info(pid)
    return " ".join(info.cmdline.split())[:width] if info else "gone"


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 'es' if word.endswith('s') else 's'}"


def start(part: Part) -> dict[str, Any]:
    """Start `part` in a session of its own and wait until it is healthy; its record (pid, start time, log). A
    start that fails in a way the part calls transient is tried again, up to START_ATTEMPTS in all."""
    for attempt in range(1, START_ATTEMPTS):
        try:
            return start_once(part)
        except StackError as e:
            if not part.transient(str(e)):
                raise
            why = [ln.strip() for ln in str(e).splitlines() if ln.strip()][-1]
            print(f"{part.name}: start {attempt} of {START_ATTEMPTS} failed ({why}); trying again", flush=True)
    return start_once(part)  # the last attempt: its failure is the caller's


def start_once(part: Part) -> dict[str, Any]:
    part.settings.logs_dir.mkdir(parents=True, exist_ok=True)
    part.cwd().mkdir(parents=True, exist_ok=True)
    log_path = part.settings.logs_dir / f"{part.name}.log"
    with open(log_path, "ab") as log:
        log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        part.setup(log)
        command = part.command()
        log.write(f"==== {shlex.join(command)}\n".encode())
        log.flush()
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                cwd=part.cwd(), env=part.env(), start_new_session=True, **part.run_as())
    info = procs.process_info(proc.pid)
    record = {"pid": proc.pid, "start_ticks": info.start_ticks if info else 0, "started_at": time.time(),
              "log": str(log_path), "internal_ports": part.internal_ports}
    deadline = time.monotonic() + part.startup_timeout_s
    while True:
        if proc.poll() is not None:
            stop(part, record)  # what it started before it failed
            raise StackError(f"{part.name} exited with code {proc.returncode} while starting; the end of "
                             f"{log_path}:\n{tail(log_path)}")
        part.prepare()
        health = part.health()
        if health.ok:
            return record
        if time.monotonic() > deadline:
            stop(part, record)
            raise StackError(f"{part.name} not healthy after {part.startup_timeout_s:.0f} s ({health.detail}); "
                             f"the end of {log_path}:\n{tail(log_path)}")
        time.sleep(1.0)


def stop(part: Part, record: dict[str, Any] | None) -> int:
    """Stop every process of `part`; how many there were. StackError if one outlives SIGKILL."""
    pids = members(part, record, procs.process_table())
    left = procs.stop_processes(pids, timeout_s=STOP_GRACE_S)
    # what started meanwhile (a raylet starting a worker while being stopped)
    late = members(part, record, procs.process_table()) - pids
    left |= procs.stop_processes(late, timeout_s=STOP_GRACE_S)
    if left:
        raise StackError(f"{part.name}: processes {sorted(left)} still run after SIGKILL")
    return len(pids | late)


def settled_health(part: Part, *, tries: int = 5) -> Health:
    """A running part's health, asked up to `tries` times a second apart: a busy server that is slow to answer
    once is not restarted."""
    part.prepare()
    health = part.health()
    for _ in range(tries - 1):
        if health.ok:
            break
        time.sleep(1.0)
        part.prepare()
        health = part.health()
    return health


def tail(path: Path, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"


# ---------------------------------------------------------------------------------------------------- commands
def line(name: str, state: str, detail: str) -> str:
    return f"{name:<10} {state:<10} {detail}"


def up(settings: Settings) -> int:
    """Start what is not running and healthy; one line per part; 0 when all are healthy."""
    if settings.db == "postgres" and (missing := pg.unavailable()):
        raise StackError(missing)
    creds = credentials(settings)
    state = read_state(settings.state_dir)
    state["settings"] = settings.recorded()
    records: dict[str, Any] = state.setdefault("parts", {})
    write_env_file(settings, creds)  # before anything starts: the services and the user read the same values
    restart: set[str] = set()
    all_parts = parts(settings, creds)
    by_name = {p.name: p for p in all_parts}
    for part in all_parts:
        record = records.get(part.name)
        if part.name not in restart and running(record):
            health = settled_health(part)
            if health.ok:
                print(line(part.name, "running", f"{health.detail} (pid {record['pid']})"), flush=True)
                continue
        for name in DEPENDENTS.get(part.name, []):  # first: Ray refuses a head whose GCS address a node still names
            stop(by_name[name], records.get(name))
            restart.add(name)
        stopped = stop(part, record)
        check_ports_free(part)
        records[part.name] = start(part)
        write_state(settings.state_dir, state)
        verb = "restarted" if record else "started"
        note = " (S3 starts empty: moto keeps objects in memory)" if isinstance(part, S3) and record else ""
        old = f", {plural(stopped, 'old process')} stopped" if stopped else ""
        print(line(part.name, verb, f"{part.health().detail} (pid {records[part.name]['pid']}{old}){note}"),
              flush=True)
    write_state(settings.state_dir, state)
    print(f"env: source {settings.env_file}", flush=True)
    return 0


def status(settings: Settings) -> int:
    """One health line per part; 0 when all are running and healthy, 1 otherwise."""
    state = read_state(settings.state_dir)
    if not (settings.state_dir / "credentials.json").exists():
        print(f"no stack in {settings.state_dir} (run `up`)")
        return 1
    creds = credentials(settings)
    healthy = True
    for part in parts(settings, creds):
        record = state.get("parts", {}).get(part.name)
        if not running(record):
            print(line(part.name, "down", "not running"))
            healthy = False
            continue
        health = part.health()
        healthy &= health.ok
        print(line(part.name, "ok" if health.ok else "unhealthy", f"{health.detail} (pid {record['pid']})"))
    return 0 if healthy else 1


def down(settings: Settings) -> int:
    """Stop every process of the stack (last part first) and delete its data; the credentials stay."""
    state = read_state(settings.state_dir)
    if not (settings.state_dir / "credentials.json").exists():
        print(f"no stack in {settings.state_dir}")
        return 0
    creds = credentials(settings)
    for part in reversed(parts(settings, creds)):
        record = state.get("parts", {}).pop(part.name, None)
        n = stop(part, record)
        write_state(settings.state_dir, state)
        print(line(part.name, "stopped", plural(n, "process") if n else "was not running"), flush=True)
    for folder in (settings.mlflow_dir, settings.ray_root / "ray-head", settings.ray_root / "ray-node2"):
        shutil.rmtree(folder, ignore_errors=True)
    pg.remove_data_dir(settings.postgres_dir, postgres_user())
    if settings.ray_root != settings.state_dir:
        shutil.rmtree(settings.ray_root, ignore_errors=True)
    return 0


def postgres_user() -> pg.ServerUser | None:
    """The user PostgreSQL's data folder belongs to, None when there is none (root without a `postgres` user)."""
    try:
        return pg.server_user()
    except pg.PostgresError:
        return None


PORT_HELP = {"dashboard_port": "Ray dashboard and Jobs API (default 8265)",
             "gcs_port": "Ray head's GCS, which the second node joins (default 6379)",
             "mlflow_port": "MLflow server (default 5000)", "s3_port": "S3 endpoint (default 9000)"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="stack.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Ports, bucket and --db are recorded by `up` and reused by `status` and `down`.")
    parser.add_argument("command", choices=["up", "down", "status"],
                        help="up: start what is not running and healthy; down: stop all of it; status: health")
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE,
                        help=f"the stack's folder (default {DEFAULT_STATE})")
    for key, flag in PORT_FLAGS.items():
        parser.add_argument(flag, dest=key, type=int, default=None, metavar="PORT", help=PORT_HELP[key])
    parser.add_argument("--bucket", default=None, help="the S3 bucket created on the endpoint (default rigpose)")
    parser.add_argument("--db", choices=["sqlite", "postgres"], default=None,
                        help="MLflow's store (default sqlite, a file in the state folder; postgres: a local "
                             "PostgreSQL server on a Unix socket only, needs its programs: apt-get install postgresql)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    state_dir = args.state_dir.resolve()
    given = {k: getattr(args, k) for k in (*PORT_FLAGS, "bucket", "db")}
    try:
        with locked(state_dir):
            settings = resolve_settings(state_dir, given)
            return {"up": up, "down": down, "status": status}[args.command](settings)
    except (StackError, pg.PostgresError) as e:
        print(f"stack {args.command}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
