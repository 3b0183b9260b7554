"""Integration fixtures: real services on 127.0.0.1, started and stopped by the tests themselves.

`s3_endpoint`: moto's S3 server (as s3fs's own tests use it), once per module, reset between tests via its
`/moto-api/reset` endpoint. Credentials are dummy values placed in the environment, never in files.
"""

from __future__ import annotations

import os
import secrets
import urllib.request
from collections.abc import Iterator

import pytest
from rigpose_testing import free_port


@pytest.fixture(scope="session", autouse=True)
def ray_token_auth() -> Iterator[str]:
    """One Ray auth choice for the whole run (PLATFORM_NOTES): token auth with one token, from the environment.

    Ray caches the token it first loads for the life of the process, so every Ray these tests start or join (local
    `ray.init`, `ray start --head`) uses this one; nothing is written to ~/.ray. Yields the token.
    """
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    token = secrets.token_hex(32)
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    try:
        yield token
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                               "AWS_DEFAULT_REGION", "AWS_REGION")}
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_REGION": "us-east-1"})
    try:
        yield endpoint
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_server: str) -> Iterator[str]:
    """A fresh, empty bucket on the local S3 endpoint; yields its s3:// URL."""
    import s3fs

    urllib.request.urlopen(urllib.request.Request(f"{s3_server}/moto-api/reset", method="POST")).read()
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    fs.mkdir("rigpose-test")
    yield "s3://rigpose-test"
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="module")
def bucket(s3_server: str, request: pytest.FixtureRequest) -> str:
    """A bucket of the module's own on the local S3 endpoint (rigpose-<module>), kept for the whole module."""
    import s3fs

    name = "rigpose-" + request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_").replace("_", "-")
    s3fs.S3FileSystem.clear_instance_cache()
    s3fs.S3FileSystem().mkdir(name)
    return f"s3://{name}"


@pytest.fixture(scope="module")
def server(bucket: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1 for the module: sqlite store, artifacts in the module's bucket; its URL."""
    from rigpose_testing import mlflow_server

    env = {**os.environ, "MLFLOW_S3_ENDPOINT_URL": os.environ["AWS_ENDPOINT_URL"]}
    with mlflow_server(tmp_path_factory.mktemp("mlflow-server"), artifacts=f"{bucket}/mlartifacts", env=env) as url:
        yield url


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """rigpose's local Ray (rigpose.cluster.connect.init_ray) for the module."""
    from rigpose.cluster.connect import init_ray, shutdown_ray

    init_ray(None)
    yield
    shutdown_ray()
