"""The parts of the local stack (`stack.py`): how each one starts (command line, environment) and how its health is
checked. Everything listens on 127.0.0.1 except Ray's gRPC ports (see `RayHead`) and PostgreSQL, which listens on a
Unix socket only (`local_postgres`).

Order matters: the S3 endpoint first (MLflow proxies its artifacts there, Ray's workers read and write it with the
keys the nodes were started with), PostgreSQL with `--db postgres` (MLflow's store), then MLflow, the Ray head, and
the second Ray node, which joins the head's GCS.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import local_postgres as pg  # beside this module

from rigpose.cluster.processes import free_port

BIN = Path(sys.executable).parent  # the venv's bin/ (not resolved: .venv/bin/python is a link to the base Python)
HOST = "127.0.0.1"
# a Unix socket path has at most 107 bytes; Ray's longest is the dashboard's <temp dir>/session_<date>_<time>_<us>_
# <pid>/sockets/dash_<module> (its longest module: TaskEventsHead; a pid of up to 7 digits), so a state folder whose
# Ray folders would be longer than the rest gets them under /tmp (a clone in /tmp/fc17/repo failed `make up`: the
# dashboard's MetricsHead socket was 108 bytes)
_RAY_SOCKET_TAIL = "/session_2026-12-07_08-18-21_589868_4194304/sockets/dash_TaskEventsHead"
RAY_DIR_MAX = 107 - len(_RAY_SOCKET_TAIL)
HEAD_NAME, NODE2_NAME = "rigpose-head", "rigpose-node2"
#: the command-line option of each port setting (what an error about a taken port tells to change)
PORT_FLAGS = {"dashboard_port": "--dashboard-port", "gcs_port": "--gcs-port", "mlflow_port": "--mlflow-port",
              "s3_port": "--s3-port"}


@dataclass
class Settings:
    """Where the stack keeps its state and on which ports its parts listen (what `up` recorded is reused)."""

    state_dir: Path
    bucket: str = "rigpose"
    region: str = "us-east-1"
    dashboard_port: int = 8265  # Ray dashboard and Jobs API
    gcs_port: int = 6379  # Ray head's GCS (Ray's default): the second node joins it
    mlflow_port: int = 5000
    s3_port: int = 9000
    db: str = "sqlite"  # MLflow's store: sqlite (a file in the state folder) or postgres (a local PostgreSQL)
    head_cpus: int = 4  # logical: 2 training workers plus Ray Data's tasks on a 2-core machine (PLATFORM_NOTES)
    node2_cpus: int = 2
    object_store_mb: int = 1024  # per node (Ray's default, 30 % of the memory each, is far more than needed)

    def recorded(self) -> dict[str, Any]:
        """What the state file keeps of these settings (not the state folder itself)."""
        return {k: v for k, v in asdict(self).items() if k != "state_dir"}

    @property
    def s3_url(self) -> str:
        return f"http://{HOST}:{self.s3_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://{HOST}:{self.mlflow_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{HOST}:{self.dashboard_port}"

    @property
    def token_file(self) -> Path:
        return self.state_dir / "ray_token"

    @property
    def env_file(self) -> Path:
        return self.state_dir / "env"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def mlflow_dir(self) -> Path:
        return self.state_dir / "mlflow"

    @property
    def tag(self) -> str:
        """8 hex digits naming the state folder where a name outside it is needed (/tmp folders, PostgreSQL's
        cluster name)."""
        return hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:8]

    @property
    def ray_root(self) -> Path:
        """The folder of the Ray nodes' temp folders: the state folder, or one under /tmp named after it when the
        state folder's path is too long for Ray's socket paths."""
        if len(str(self.state_dir / "ray-node2")) <= RAY_DIR_MAX:
            return self.state_dir
        return Path("/tmp") / f"rigpose-{self.tag}"  # 31 bytes with /ray-node2

    @property
    def postgres_dir(self) -> Path:
        """PostgreSQL's data folder, its socket's folder too (`local_postgres.data_dir`)."""
        return pg.data_dir(self.state_dir, self.tag)

    @property
    def mlflow_store_uri(self) -> str:
        """MLflow's --backend-store-uri: the sqlite file in the state folder, or the database `mlflow` through the
        PostgreSQL socket (the driver named: SQLAlchemy 2.1's default for postgresql:// is psycopg 3)."""
        if self.db == "postgres":
            return f"postgresql+psycopg2://{pg.SUPERUSER}@/{pg.DATABASE}?host={quote(str(self.postgres_dir))}"
        return f"sqlite:///{self.mlflow_dir / 'mlflow.db'}"


@dataclass
class Credentials:
    """Generated once per state folder, kept in 0600 files there: fake S3 keys (moto accepts any) and the Ray
    token (its file is what RAY_AUTH_TOKEN_PATH names)."""

    aws_access_key_id: str
    aws_secret_access_key: str
    token_file: Path

    def token(self) -> str:
        return self.token_file.read_text().strip()


@dataclass
class Health:
    """One part's state: `ok`, and a line for the terminal (never a secret)."""

    ok: bool
    detail: str


@dataclass
class Part:
    """A part of the stack: its command line, environment and public ports; `health` says whether it serves."""

    name: str
    settings: Settings
    creds: Credentials
    startup_timeout_s: float = 120.0
    internal_ports: dict[str, int] = field(default_factory=dict)  # chosen at start, recorded for the record

    def public_ports(self) -> dict[str, int]:
        """{settings field: port} of the ports users reach (checked free before a start)."""
        return {}

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return service_env(self.settings, self.creds)

    def cwd(self) -> Path:
        return self.settings.state_dir

    def markers(self) -> list[str]:
        """Strings only this part's processes have on their command line (beyond its session and children)."""
        return []

    def health(self) -> Health:
        raise NotImplementedError

    def prepare(self) -> None:
        """Runs before each health check: what `up` sets up in a running part (the S3 part's bucket)."""

    def setup(self, log: IO[bytes]) -> None:
        """Runs before each start, its output into the part's log: what the part needs on disk first (PostgreSQL's
        data folder)."""

    def run_as(self) -> dict[str, Any]:
        """`subprocess.Popen` options of the user the part runs as, when not this process's (PostgreSQL's)."""
        return {}

    def transient(self, log_tail: str) -> bool:
        """Whether a start that failed with this end of its log may succeed when tried again (a busy machine)."""
        return False


def service_env(settings: Settings, creds: Credentials) -> dict[str, str]:
    """The environment every part starts with: this one without a user's Ray settings, plus the stack's endpoints,
    keys and token file; the venv's bin/ first on PATH (a job's `python -m rigpose` is the cluster's Python)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_AUTH_TOKEN", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update(PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", RAY_AUTH_MODE="token",
               RAY_AUTH_TOKEN_PATH=str(creds.token_file), AWS_ENDPOINT_URL=settings.s3_url,
               AWS_REGION=settings.region, AWS_DEFAULT_REGION=settings.region,
               AWS_ACCESS_KEY_ID=creds.aws_access_key_id, AWS_SECRET_ACCESS_KEY=creds.aws_secret_access_key,
               MLFLOW_TRACKING_URI=settings.mlflow_url)
    return env


def _get(url: str, *, token: str | None = None, timeout_s: float = 3.0) -> bytes:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s) as r:
        return r.read()


def s3_client(settings: Settings, creds: Credentials) -> Any:
    """A boto3 S3 client of the stack's endpoint and keys."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=settings.s3_url, region_name=settings.region,
                        aws_access_key_id=creds.aws_access_key_id, aws_secret_access_key=creds.aws_secret_access_key,
                        config=Config(connect_timeout=3, read_timeout=5, retries={"max_attempts": 1}))


class S3(Part):
    """moto's S3 server. It keeps every object in memory: a (re)start begins with an empty bucket."""

    def public_ports(self) -> dict[str, int]:
        return {"s3_port": self.settings.s3_port}

    def command(self) -> list[str]:
        return [str(BIN / "moto_server"), "-H", HOST, "-p", str(self.settings.s3_port)]

    def health(self) -> Health:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            s3_client(self.settings, self.creds).head_bucket(Bucket=self.settings.bucket)
        except ClientError:
            return Health(False, f"{self.settings.s3_url} answers, bucket {self.settings.bucket} missing")
        except BotoCoreError as e:
            return Health(False, f"{self.settings.s3_url} does not answer ({type(e).__name__})")
        return Health(True, f"{self.settings.s3_url} bucket s3://{self.settings.bucket} (objects in memory)")

    def prepare(self) -> None:
        """Create the bucket when the endpoint answers without it."""
        from botocore.exceptions import BotoCoreError, ClientError

        client = s3_client(self.settings, self.creds)
        try:
            client.head_bucket(Bucket=self.settings.bucket)
        except ClientError:
            client.create_bucket(Bucket=self.settings.bucket)
        except BotoCoreError:  # not up yet
            pass


class Postgres(Part):
    """PostgreSQL (`--db postgres` only), MLflow's store: a Unix socket in its data folder, no TCP port; the database
    `mlflow` is created when missing. Run as the `postgres` user under root."""

    @property
    def cluster_name(self) -> str:
        return f"rigpose-db-{self.settings.tag}"

    def command(self) -> list[str]:
        return pg.server_command(self.settings.postgres_dir, self.cluster_name)

    def env(self) -> dict[str, str]:
        return pg.server_env()

    def cwd(self) -> Path:
        return self.settings.postgres_dir.parent  # the state folder, or /tmp (see `local_postgres.data_dir`)

    def markers(self) -> list[str]:
        # each server process calls setsid, leaving the part's session; all have the cluster name in their title
        return [self.cluster_name]

    def setup(self, log: IO[bytes]) -> None:
        pg.ensure_data_dir(self.settings.postgres_dir, pg.server_user(), log)
        pg.clear_stale_lock(self.settings.postgres_dir, log)

    def run_as(self) -> dict[str, Any]:
        return pg.server_user().popen_options()

    def health(self) -> Health:
        import psycopg2

        folder = self.settings.postgres_dir
        try:
            conn = pg.connect(folder)
        except psycopg2.OperationalError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            reason = first.rpartition("failed: ")[2]  # after `connection to server on socket "..." failed: `
            return Health(False, f"socket {folder} does not answer with database {pg.DATABASE} ({reason})")
        with contextlib.closing(conn):
            version = conn.server_version  # e.g. 150018
        return Health(True, f"socket {folder}/.s.PGSQL.{pg.PORT} (no TCP), database {pg.DATABASE}, "
                            f"PostgreSQL {version // 10000}.{version % 10000}")

    def prepare(self) -> None:
        """Create the database `mlflow` when the server answers without it."""
        pg.create_database(self.settings.postgres_dir)


class MLflow(Part):
    """`mlflow server`: store `Settings.mlflow_store_uri` (sqlite in the state folder, or PostgreSQL), artifacts
    proxied to s3://<bucket>/mlartifacts."""

    def public_ports(self) -> dict[str, int]:
        return {"mlflow_port": self.settings.mlflow_port}

    def command(self) -> list[str]:
        return [str(BIN / "mlflow"), "server", "--host", HOST, "--port", str(self.settings.mlflow_port),
                "--workers", "1", "--backend-store-uri", self.settings.mlflow_store_uri,
                "--artifacts-destination", f"s3://{self.settings.bucket}/mlartifacts"]

    def env(self) -> dict[str, str]:
        # MLflow 3.x otherwise starts about ten job-runner processes that nothing here uses; libpq's PG* settings
        # would point the driver away from the stack's socket
        env = {k: v for k, v in super().env().items() if not k.startswith("PG")}
        return {**env, "MLFLOW_S3_ENDPOINT_URL": self.settings.s3_url, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}

    def cwd(self) -> Path:
        return self.settings.mlflow_dir

    def health(self) -> Health:
        try:
            ok = _get(f"{self.settings.mlflow_url}/health").strip() == b"OK"
        except (OSError, urllib.error.URLError) as e:
            return Health(False, f"{self.settings.mlflow_url} does not answer ({type(e).__name__})")
        return Health(ok, f"{self.settings.mlflow_url} store {self.settings.db}, artifacts "
                          f"s3://{self.settings.bucket}/mlartifacts")


def ray_nodes(settings: Settings, creds: Credentials) -> list[dict[str, Any]]:
    """The cluster's nodes as the dashboard's state API lists them (with the token); OSError when it does not
    answer."""
    body = json.loads(_get(f"{settings.dashboard_url}/api/v0/nodes?limit=100", token=creds.token(), timeout_s=5))
    return body["data"]["result"]["result"]


class RayNode(Part):
    """`ray start --block` of one node, in its own --temp-dir: the process stays, its children are the node."""

    node_name = ""

    @property
    def temp_dir(self) -> Path:
        return self.settings.ray_root / ("ray-head" if self.node_name == HEAD_NAME else "ray-node2")

    def markers(self) -> list[str]:
        return [str(self.temp_dir)]

    def _common(self) -> list[str]:
        self.internal_ports = {k: free_port() for k in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                         "runtime-env-agent-port", "metrics-export-port")}
        return [str(BIN / "ray"), "start", "--block", "--disable-usage-stats", f"--temp-dir={self.temp_dir}",
                f"--node-name={self.node_name}",
                f"--object-store-memory={self.settings.object_store_mb * 1024 * 1024}",
                *(f"--{k}={v}" for k, v in self.internal_ports.items())]

    def health(self) -> Health:
        try:
            nodes = ray_nodes(self.settings, self.creds)
        except (OSError, urllib.error.URLError, ValueError, KeyError) as e:
            return Health(False, f"dashboard {self.settings.dashboard_url} does not answer ({type(e).__name__})")
        mine = [n for n in nodes if n.get("node_name") == self.node_name and n.get("state") == "ALIVE"]
        if not mine:
            return Health(False, f"no alive node {self.node_name} in the cluster")
        resources = {k: v for k, v in mine[0].get("resources_total", {}).items()
                     if k not in ("memory", "object_store_memory") and not k.startswith("node:")}
        return Health(True, self.describe(mine[0], resources))

    def describe(self, node: dict[str, Any], resources: dict[str, float]) -> str:
        raise NotImplementedError

    def transient(self, log_tail: str) -> bool:
        # `ray start` gives its raylet a fixed 30 s to register with the GCS; on a loaded 2-core machine that can pass
        return "timed out during startup" in log_tail


class RayHead(RayNode):
    """The head: GCS, dashboard (Jobs API) on 127.0.0.1, `head_cpus` logical CPUs.

    Ray on Linux advertises the machine's address even when given 127.0.0.1 (`resolve_ip_for_localhost`), and its
    gRPC servers (GCS, raylet, object manager) listen on every interface: token auth guards them."""

    node_name = HEAD_NAME

    def public_ports(self) -> dict[str, int]:
        return {"gcs_port": self.settings.gcs_port, "dashboard_port": self.settings.dashboard_port}

    def command(self) -> list[str]:
        cmd = self._common()
        self.internal_ports["ray-client-server-port"] = free_port()
        return [*cmd, "--head", f"--port={self.settings.gcs_port}", "--include-dashboard=true",
                f"--dashboard-host={HOST}", f"--dashboard-port={self.settings.dashboard_port}",
                f"--ray-client-server-port={self.internal_ports['ray-client-server-port']}",
                f"--num-cpus={self.settings.head_cpus}"]

    def describe(self, node: dict[str, Any], resources: dict[str, float]) -> str:
        return (f"{self.settings.dashboard_url} (Jobs API), GCS {node.get('node_ip')}:{self.settings.gcs_port}, "
                f"{json.dumps(resources, sort_keys=True)}")


class RayNode2(RayNode):
    """A second node on this machine, joining the head's GCS, with `node2_cpus` CPUs and a resource {"node2": 1}."""

    node_name = NODE2_NAME

    def command(self) -> list[str]:
        return [*self._common(), f"--address={HOST}:{self.settings.gcs_port}",
                f"--num-cpus={self.settings.node2_cpus}", "--resources", json.dumps({"node2": 1})]

    def describe(self, node: dict[str, Any], resources: dict[str, float]) -> str:
        return f"joined GCS :{self.settings.gcs_port}, {json.dumps(resources, sort_keys=True)}"


def parts(settings: Settings, creds: Credentials) -> list[Part]:
    """The stack's parts, in start order (PostgreSQL only with `--db postgres`)."""
    database = [Postgres("postgres", settings, creds, 60.0)] if settings.db == "postgres" else []
    return [S3("s3", settings, creds, startup_timeout_s=60.0), *database, MLflow("mlflow", settings, creds, 240.0),
            RayHead("ray-head", settings, creds, 180.0), RayNode2("ray-node2", settings, creds, 180.0)]
