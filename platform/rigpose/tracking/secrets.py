"""The project's one list of credential variables, and the one scrubber that keeps their values and URL passwords
out of every log line, param, tag, artifact and file the project writes (run.json, job.json, checkpoints)."""

from __future__ import annotations

import os
import re
from typing import Any

#: environment variables whose values are secrets: never logged or written anywhere. Not MLFLOW_TRACKING_USERNAME:
#: a user name identifies, it does not authenticate (the user part of a URL is shown too), and MLflow records it as
#: the `mlflow.user` of what it logs by design; `rigpose submit` still sends it only with --forward-credentials.
SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "MLFLOW_TRACKING_PASSWORD",
              "MLFLOW_TRACKING_TOKEN", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY",
              "RAY_AUTH_TOKEN", "AZURE_STORAGE_ACCESS_KEY", "AZURE_STORAGE_CONNECTION_STRING",
              "GOOGLE_APPLICATION_CREDENTIALS")
MASK = "***"

_URL_PASSWORD = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/@:\s]*):(?P<pw>[^/@\s]+)@")


def secret_values(environ: dict[str, str] | None = None) -> list[str]:
    """The values of the credential variables set in `environ` (default os.environ), longest first.

    Values shorter than 4 characters are left alone: masking them would garble ordinary text.
    """
    environ = dict(os.environ) if environ is None else environ
    values = {environ[k] for k in SECRET_ENV if len(environ.get(k, "")) >= 4}
    return sorted(values, key=len, reverse=True)


def scrub(text: str, secrets: list[str] | None = None) -> str:
    """`text` with URL passwords and the credential variables' values (`secrets`, default: this process's
    environment, `secret_values()`) replaced by `***`. Idempotent."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    for s in secret_values() if secrets is None else secrets:
        text = text.replace(s, MASK)
    return text


def scrub_obj(obj: Any, secrets: list[str] | None = None) -> Any:
    """A copy of `obj` (JSON-like: dicts, lists, tuples, strings, numbers) with `scrub` applied to every string in
    it, dict keys included; anything else is returned as it is. What every file the project writes goes through."""
    secrets = secret_values() if secrets is None else secrets
    if isinstance(obj, str):
        return scrub(obj, secrets)
    if isinstance(obj, dict):
        return {scrub_obj(k, secrets): scrub_obj(v, secrets) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(scrub_obj(v, secrets) for v in obj)
    return obj


def has_password(text: str) -> bool:
    """True when `text` holds a URL with a password (`scheme://user:password@host`)."""
    return _URL_PASSWORD.search(text) is not None


def strip_passwords(text: str) -> str:
    """`text` with the password of every URL in it left out: `http://user:pw@host` -> `http://user@host`,
    `http://:token@host` -> `http://host` (what may be sent where a password must not go)."""
    return _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}@" if m["user"] else m["scheme"], text)
