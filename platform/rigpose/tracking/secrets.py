"""The project's one list of credential variables, and the scrubber that keeps their values and URL passwords out
of every log, param, tag and file."""

from __future__ import annotations

import os
import re

#: environment variables whose values are secrets: never logged anywhere
SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "MLFLOW_TRACKING_USERNAME",
              "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "MLFLOW_AUTH_ADMIN_PASSWORD",
              "MLFLOW_FLASK_SERVER_SECRET_KEY", "RAY_AUTH_TOKEN", "AZURE_STORAGE_ACCESS_KEY",
              "AZURE_STORAGE_CONNECTION_STRING", "GOOGLE_APPLICATION_CREDENTIALS")


_URL_PASSWORD = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/@:\s]*):(?P<pw>[^/@\s]+)@")


def secret_values(environ: dict[str, str] | None = None) -> list[str]:
    """The values of the credential variables set in `environ` (default os.environ), longest first."""
    environ = dict(os.environ) if environ is None else environ
    values = {environ[k] for k in SECRET_ENV if len(environ.get(k, "")) >= 4}
    return sorted(values, key=len, reverse=True)


def scrub(text: str, secrets: list[str] | None = None) -> str:
    """`text` with URL passwords and the credential variables' values replaced by `***`."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    for s in secret_values() if secrets is None else secrets:
        text = text.replace(s, "***")
    return text
