"""The one scrubber (rigpose.tracking.secrets) and the files it guards: run.json, job.json, model.pt's metadata."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rigpose.config import load_job
from rigpose.tracking.secrets import SECRET_ENV, has_password, scrub, scrub_obj, secret_values, strip_passwords
from rigpose.train.trainer import RUN_FILE, _check_resumable, _run_record, _write_json

SHA = "0123456789abcdef" * 4


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> str:
    """A credential value in the environment (and no other)."""
    for name in SECRET_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SESSION_TOKEN", "tok-5e1f0a9c33")
    return "tok-5e1f0a9c33"


def test_scrub_obj_masks_every_string_of_nested_dicts_lists_and_tuples_keys_included(token: str) -> None:
    obj = {"uri": "http://bob:pw123@mlflow:5000", "n": 3, "x": 0.5, "ok": True, "none": None,
           "list": [f"a-{token}", ("http://u:p@h/x", 7)], token: {"deep": [token]}}
    assert scrub_obj(obj) == {"uri": "http://bob:***@mlflow:5000", "n": 3, "x": 0.5, "ok": True, "none": None,
                              "list": ["a-***", ("http://u:***@h/x", 7)], "***": {"deep": ["***"]}}
    assert obj["uri"] == "http://bob:pw123@mlflow:5000"  # a copy: the original (what MLflow needs) is unchanged


def test_scrub_is_idempotent_and_leaves_urls_without_passwords_and_short_values_alone(
        monkeypatch: pytest.MonkeyPatch, token: str) -> None:
    text = f"http://alice:s3cr3t@host:1/p s3://bucket/k http://bob@host {token}"
    once = scrub(text)
    assert once == "http://alice:***@host:1/p s3://bucket/k http://bob@host ***" and scrub(once) == once
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "abc")  # too short to mask without garbling ordinary text
    assert secret_values() == [token] and scrub("abc") == "abc"


@pytest.mark.parametrize(("url", "stripped"), [
    ("http://alice:s3cr3t@mlflow:5000/x", "http://alice@mlflow:5000/x"),
    ("https://:tok3n@host", "https://host"),
    ("s3://bucket/key", "s3://bucket/key"),
    ("http://bob@host", "http://bob@host"),
    ("a=http://u:p@h,b=https://v:q@k", "a=http://u@h,b=https://v@k"),
])
def test_strip_passwords_leaves_out_the_password_of_every_url(url: str, stripped: str) -> None:
    assert strip_passwords(url) == stripped
    assert has_password(url) is (url != stripped)
    assert not has_password(strip_passwords(url))


def test_the_tracking_username_is_no_secret_and_every_other_credential_variable_is() -> None:
    assert "MLFLOW_TRACKING_USERNAME" not in SECRET_ENV
    assert {"MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "AWS_SECRET_ACCESS_KEY", "RAY_AUTH_TOKEN"} <= set(
        SECRET_ENV)


# ------------------------------------------------------------------ the run folder


def _job(*sets: str):
    return load_job(None, ["tracking.uri=http://bob:pw-9f2c1e@mlflow:5000", *sets])


def test_run_json_and_job_json_hold_the_scrubbed_tracking_uri(tmp_path: Path, token: str) -> None:
    job = _job(f"run.name=run-{token}")
    _write_json(str(tmp_path), RUN_FILE, _run_record(job, SHA))
    _write_json(str(tmp_path), "job.json", job.model_dump())
    for name in (RUN_FILE, "job.json"):
        text = (tmp_path / name).read_text()
        assert "pw-9f2c1e" not in text and token not in text
    assert json.loads((tmp_path / "job.json").read_text())["tracking"]["uri"] == "http://bob:***@mlflow:5000"
    assert json.loads((tmp_path / RUN_FILE).read_text())["job"]["run"]["name"] == "run-***"
    assert job.tracking.uri == "http://bob:pw-9f2c1e@mlflow:5000"  # the job itself keeps the real URI


def test_a_run_with_a_password_in_its_tracking_uri_still_resumes(tmp_path: Path, token: str) -> None:
    _write_json(str(tmp_path), RUN_FILE, _run_record(_job(), SHA))
    assert _check_resumable(str(tmp_path), _run_record(_job(), SHA)) is True
    # another password (a rotated one) changes nothing the weights depend on
    assert _check_resumable(str(tmp_path), _run_record(load_job(None, ["tracking.uri=http://bob:new@m"]), SHA))
    with pytest.raises(ValueError, match="another model architecture"):
        _check_resumable(str(tmp_path), _run_record(_job("model.width=64"), SHA))
