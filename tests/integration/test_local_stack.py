"""The local stack (`infra/local/stack.py`, what `make up` / `make down` run) for real, in a temporary state folder
on free ports: `up` starts four healthy parts (two alive Ray nodes seen with the token, MLflow's /health, the S3
bucket), its HTTP ports on 127.0.0.1 only, and an env file (0600) that Ray's job client works with; a second `up`
starts nothing; a killed part is restarted alone (the Ray head with the node that joins it); `down` leaves none of
the stack's processes behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from rigpose_testing import Stack

from rigpose.cluster.processes import alive, descendants, stop_processes

pytestmark = [pytest.mark.integration, pytest.mark.slow]
PARTS = ["s3", "mlflow", "ray-head", "ray-node2"]


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    s = Stack()
    try:
        yield s
    finally:
        left = s.processes()
        s.run("down")
        stop_processes(s.processes() | left, timeout_s=5.0)  # what a failed test left, by pid
        shutil.rmtree(s.root, ignore_errors=True)


def _lines(out: str) -> dict[str, str]:
    """{part: its state word} of `up`'s health lines."""
    return Stack.states(out, PARTS)


def _get(url: str, token: str | None = None) -> bytes:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
        return r.read()


def _listen_addresses(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp writes them) listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            address, _, hex_port = cols[1].rpartition(":")
            if cols[3] == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


@pytest.mark.timeout(420)
def test_up_starts_four_healthy_parts_with_a_private_env_file(stack: Stack) -> None:
    result = stack.run("up")
    assert result.returncode == 0, result.stdout + result.stderr
    assert _lines(result.stdout) == dict.fromkeys(PARTS, "started"), result.stdout
    env = stack.env()
    token = Path(env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    for name in ("env", "ray_token", "credentials.json", "stack.json"):
        assert (stack.state / name).stat().st_mode & 0o777 == 0o600, name
    assert token not in result.stdout + result.stderr and env["AWS_SECRET_ACCESS_KEY"] not in result.stdout

    nodes = json.loads(_get(f"{env['RAY_API_SERVER_ADDRESS']}/api/v0/nodes", token))["data"]["result"]["result"]
    alive_nodes = [n for n in nodes if n["state"] == "ALIVE"]
    assert len(alive_nodes) == 2 and sum(n["resources_total"].get("node2", 0) for n in alive_nodes) == 1, nodes
    with pytest.raises(urllib.error.HTTPError, match="401"):
        _get(f"{env['RAY_API_SERVER_ADDRESS']}/api/v0/nodes")  # token auth is on
    jobs = subprocess.run([sys.executable, "-c", "import os; from ray.job_submission import JobSubmissionClient as C;"
                           "print(len(C(os.environ['RAY_API_SERVER_ADDRESS']).list_jobs()))"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert jobs.returncode == 0 and jobs.stdout.strip() == "0", jobs.stderr[-2000:]  # RAY_AUTH_TOKEN_PATH alone

    assert _get(f"{env['MLFLOW_TRACKING_URI']}/health").strip() == b"OK"
    import boto3

    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_REGION"],
                      aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    s3.head_bucket(Bucket="rigpose")
    loopback = {"0100007F", "0000000000000000FFFF00000100007F"}  # 127.0.0.1, as IPv4 and IPv4-mapped IPv6
    for flag in ("--dashboard-port", "--mlflow-port", "--s3-port"):
        assert _listen_addresses(stack.ports[flag]) <= loopback, flag


@pytest.mark.timeout(120)
def test_a_second_up_finds_everything_healthy_and_starts_nothing(stack: Stack) -> None:
    before = stack.records()
    result = stack.run("up")
    assert result.returncode == 0, result.stdout + result.stderr
    assert _lines(result.stdout) == dict.fromkeys(PARTS, "running"), result.stdout
    assert stack.records() == before
    status = stack.run("status")
    assert status.returncode == 0 and _lines(status.stdout) == dict.fromkeys(PARTS, "ok"), status.stdout


@pytest.mark.timeout(300)
def test_up_restarts_only_the_part_that_died(stack: Stack) -> None:
    before = stack.records()
    mlflow = before["mlflow"]["pid"]
    children = descendants(mlflow)  # uvicorn, which would outlive its parent and keep the port
    os.kill(mlflow, 9)
    result = stack.run("up")
    assert result.returncode == 0, result.stdout + result.stderr
    assert _lines(result.stdout) == {"s3": "running", "mlflow": "restarted", "ray-head": "running",
                                     "ray-node2": "running"}, result.stdout
    after = stack.records()
    assert {k: v for k, v in after.items() if k != "mlflow"} == {k: v for k, v in before.items() if k != "mlflow"}
    assert after["mlflow"]["pid"] != mlflow and not any(alive(p) for p in children)
    assert _get(f"{stack.env()['MLFLOW_TRACKING_URI']}/health").strip() == b"OK"


@pytest.mark.timeout(300)
def test_a_dead_ray_head_is_restarted_with_the_node_that_joins_it(stack: Stack) -> None:
    before = stack.records()
    os.kill(before["ray-head"]["pid"], 9)  # `ray start --block`: its node's processes are left without it
    result = stack.run("up")
    assert result.returncode == 0, result.stdout + result.stderr
    assert _lines(result.stdout) == {"s3": "running", "mlflow": "running", "ray-head": "restarted",
                                     "ray-node2": "restarted"}, result.stdout
    after = stack.records()
    assert (after["s3"], after["mlflow"]) == (before["s3"], before["mlflow"])
    env = stack.env()
    token = Path(env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    nodes = json.loads(_get(f"{env['RAY_API_SERVER_ADDRESS']}/api/v0/nodes", token))["data"]["result"]["result"]
    assert len([n for n in nodes if n["state"] == "ALIVE"]) == 2, nodes


@pytest.mark.timeout(180)
def test_down_stops_every_process_of_the_stack(stack: Stack) -> None:
    ours = stack.processes()
    assert len(ours) > 10  # the two Ray nodes alone run a dozen
    result = stack.run("down")
    assert result.returncode == 0, result.stdout + result.stderr
    assert not [p for p in ours if alive(p)], result.stdout
    assert not stack.processes()
    status = stack.run("status")
    assert status.returncode == 1 and _lines(status.stdout) == dict.fromkeys(PARTS, "down"), status.stdout
