"""The guest agent's exec, run on the host with /workspace mapped to a temp folder."""

import os
import time
from pathlib import Path

import pytest

from sheesh.guest.agent import EXIT_TIMEOUT, AgentConfig, RequestError, run_exec


@pytest.fixture
def config(tmp_path: Path) -> AgentConfig:
    ws = tmp_path / "ws"
    (ws / "sub").mkdir(parents=True)
    return AgentConfig(workspace=str(ws), uid=None, gid=None, home=str(ws))


def test_stdout_stderr_exit_code(config: AgentConfig) -> None:
    out = run_exec(config, {"cmd": "echo out; echo err >&2; exit 3"})
    assert out["stdout"] == "out\n"
    assert out["stderr"] == "err\n"
    assert out["exit_code"] == 3
    assert out["timed_out"] is False


def test_cwd_maps_into_workspace_and_env_is_set(config: AgentConfig) -> None:
    out = run_exec(config, {"cmd": 'pwd; echo "$GREETING"', "cwd": "/workspace/sub", "env": {"GREETING": "hi"}})
    assert out["stdout"] == f"{config.workspace}/sub\nhi\n"


def test_missing_cwd_is_refused(config: AgentConfig) -> None:
    with pytest.raises(RequestError, match="does not exist"):
        run_exec(config, {"cmd": "true", "cwd": "/workspace/nope"})


def test_timeout_kills_the_whole_process_group(config: AgentConfig, tmp_path: Path) -> None:
    marker = tmp_path / "survived"
    start = time.monotonic()
    out = run_exec(config, {"cmd": f"(sleep 1.5; touch {marker}) & sleep 30", "timeout_ms": 300})
    assert time.monotonic() - start < 3
    assert out["timed_out"] is True
    assert out["exit_code"] == EXIT_TIMEOUT
    time.sleep(1.8)
    assert not marker.exists(), "background child outlived the timeout"


def test_output_is_capped(config: AgentConfig) -> None:
    out = run_exec(config, {"cmd": "head -c 100000 /dev/zero | tr '\\0' a", "output_limit": 1000})
    assert len(out["stdout"]) == 1000
    assert out["truncated"] is True


def test_background_child_holding_stdout_does_not_block(config: AgentConfig) -> None:
    start = time.monotonic()
    out = run_exec(config, {"cmd": "sleep 5 & echo started"})
    assert out["stdout"] == "started\n"
    assert time.monotonic() - start < 2


def test_signal_death_maps_to_128_plus_signal(config: AgentConfig) -> None:
    out = run_exec(config, {"cmd": "kill -9 $$"})
    assert out["exit_code"] == 137


def test_non_string_cmd_is_refused(config: AgentConfig) -> None:
    with pytest.raises(RequestError):
        run_exec(config, {"cmd": ["ls"]})


def test_base_env_has_home_and_path(config: AgentConfig) -> None:
    out = run_exec(config, {"cmd": 'echo "$HOME|$PATH"'})
    home, path = out["stdout"].strip().split("|")
    assert home == config.home
    assert "/usr/bin" in path.split(os.pathsep)
