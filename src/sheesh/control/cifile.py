"""The CI file a repository carries (``.rerobots.yml``), in YAML::

    type: basic_vm          # workspace type the job runs on (default: the project's, basic_vm)
    timeout: 600            # seconds for all commands together (default and maximum: ci_job_timeout_s)
    env:                    # environment of every command
      CI: "true"
    script:                 # commands, each run with bash -lc in the checkout (/workspace/repo) as uid 1000;
      - make                # the first that exits non-zero (or times out) fails the job
      - make test

``script`` is required; other keys are refused, so a typo does not pass silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import yaml

from sheesh.errors import InvalidInputError

CI_FILE = ".rerobots.yml"
MAX_COMMANDS = 100
MAX_FILE_BYTES = 64 * 1024
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class CiFileError(InvalidInputError):
    """The repository's CI file is missing or malformed."""


@dataclass(frozen=True, kw_only=True)
class CiFile:
    script: list[str]
    type: str | None = None
    timeout_s: float | None = None
    env: dict[str, str] = field(default_factory=dict)


def parse_ci_file(text: str) -> CiFile:
    if len(text.encode()) > MAX_FILE_BYTES:
        raise CiFileError(f"{CI_FILE} is larger than {MAX_FILE_BYTES} bytes")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CiFileError(f"{CI_FILE} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise CiFileError(f"{CI_FILE} must be a mapping with a script list")
    unknown = set(raw) - {"type", "timeout", "env", "script"}
    if unknown:
        raise CiFileError(f"{CI_FILE}: unknown keys {', '.join(sorted(map(str, unknown)))}")
    script = raw.get("script")
    if isinstance(script, str):
        script = [script]
    if not isinstance(script, list) or not script or not all(isinstance(c, str) and c.strip() for c in script):
        raise CiFileError(f"{CI_FILE}: script must be a non-empty list of commands")
    if len(script) > MAX_COMMANDS:
        raise CiFileError(f"{CI_FILE}: at most {MAX_COMMANDS} commands")
    wtype = raw.get("type")
    if wtype is not None and not isinstance(wtype, str):
        raise CiFileError(f"{CI_FILE}: type must be a workspace type name")
    timeout = raw.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0):
        raise CiFileError(f"{CI_FILE}: timeout must be a positive number of seconds")
    env = raw.get("env") or {}
    if not isinstance(env, dict) or not all(isinstance(k, str) and _ENV_KEY.match(k) for k in env):
        raise CiFileError(f"{CI_FILE}: env must map variable names to values")
    return CiFile(
        script=list(script),
        type=wtype,
        timeout_s=float(timeout) if timeout is not None else None,
        env={k: "" if v is None else str(v) for k, v in env.items()},
    )
