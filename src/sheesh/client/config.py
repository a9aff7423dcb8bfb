"""Where the SDK and the CLI find the server and the API key.

Precedence: arguments, then the environment (``SHEESH_URL``, ``SHEESH_API_KEY``), then the file ``sheesh login``
writes (``$XDG_CONFIG_HOME/sheesh/config.json``, default ``~/.config/sheesh/config.json``, mode 0600).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from sheesh.client.errors import ConfigurationError
from sheesh.secretfile import write_secret

DEFAULT_URL = "http://127.0.0.1:3000"
URL_ENV = "SHEESH_URL"
KEY_ENV = "SHEESH_API_KEY"


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "sheesh" / "config.json"


@dataclass(frozen=True)
class Credentials:
    base_url: str
    api_key: str


def read_config(path: Path | None = None) -> dict[str, str]:
    """The saved login (``url``, ``apiKey``), or {} when there is none or it cannot be read."""
    try:
        data = json.loads((path or config_path()).read_text())
    except (OSError, ValueError):
        return {}
    return (
        {k: str(v) for k, v in data.items() if k in ("url", "apiKey") and isinstance(v, str)}
        if isinstance(data, dict)
        else {}
    )


def save_config(url: str, api_key: str, path: Path | None = None) -> Path:
    """Write the login for later commands (readable by this user only). Returns the file's path."""
    path = path or config_path()
    write_secret(path, json.dumps({"url": url, "apiKey": api_key}))
    return path


def resolve(base_url: str | None = None, api_key: str | None = None) -> Credentials:
    """The server and key to use (see the module docstring).

    :raise ConfigurationError: no API key anywhere
    """
    saved = read_config()
    url = base_url or os.environ.get(URL_ENV) or saved.get("url") or DEFAULT_URL
    key = api_key or os.environ.get(KEY_ENV) or saved.get("apiKey")
    if not key:
        raise ConfigurationError(f"no API key: pass api_key=, set {KEY_ENV}, or run `sheesh login`")
    return Credentials(url.rstrip("/"), key)
