"""The guest agent's streaming jobs, on the host (/workspace mapped to a temp folder): flow control, limits,
the terminal, and a host that goes away."""

from __future__ import annotations

import base64
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from sheesh.guest.agent import AgentConfig
from sheesh.guest.execution import RequestError
from sheesh.guest.protocol import STREAM_WINDOW
from sheesh.guest.streams import StreamJobs


class Frames:
    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.cond = threading.Condition()

    def send(self, frame: dict[str, Any]) -> None:
        with self.cond:
            self.frames.append(frame)
            self.cond.notify_all()

    def output(self) -> int:
        with self.cond:
            return sum(len(base64.b64decode(f["data"])) for f in self.frames if f["event"] == "output")

    def wait_exit(self, timeout_s: float = 10) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while not any(f["event"] == "exit" for f in self.frames):
                assert self.cond.wait(max(0.0, deadline - time.monotonic())), "no exit"
            return next(f for f in self.frames if f["event"] == "exit")


@pytest.fixture
def jobs(tmp_path: Path) -> tuple[StreamJobs, Frames]:
    ws = tmp_path / "ws"
    ws.mkdir()
    frames = Frames()
    config = AgentConfig(workspace=str(ws), uid=None, gid=None, home=str(ws))
    return StreamJobs(config, None, frames.send), frames


def test_output_waits_for_acknowledgements(jobs: tuple[StreamJobs, Frames]) -> None:
    streams, frames = jobs
    total = 3 * STREAM_WINDOW
    streams.start({"stream": "s", "cmd": f"head -c {total} /dev/zero"})
    time.sleep(1.0)
    sent = frames.output()
    assert STREAM_WINDOW <= sent < STREAM_WINDOW + 128 * 1024, "the window was not respected"
    assert not any(f["event"] == "exit" for f in frames.frames)
    while frames.output() < total:
        streams.get("s").ack(frames.output())
        time.sleep(0.05)
    assert frames.wait_exit()["exit_code"] == 0 and frames.output() == total
    assert len(streams) == 0


def test_each_output_stream_is_capped_without_a_terminal(jobs: tuple[StreamJobs, Frames]) -> None:
    streams, frames = jobs
    streams.start({"stream": "s", "cmd": "head -c 5000 /dev/zero; head -c 10 /dev/zero >&2", "output_limit": 100})
    end = frames.wait_exit()
    assert end["truncated"] is True and frames.output() == 110


def test_a_host_that_goes_away_takes_its_jobs_along(jobs: tuple[StreamJobs, Frames]) -> None:
    streams, _ = jobs
    reply = streams.start({"stream": "s", "cmd": "sleep 60"})
    streams.host_gone()
    deadline = time.monotonic() + 10
    while len(streams):
        assert time.monotonic() < deadline, "the job outlived its host"
        time.sleep(0.05)
    assert not Path(f"/proc/{reply['pid']}").exists() or "Z" in Path(f"/proc/{reply['pid']}/stat").read_text()


def test_bad_requests_are_refused(jobs: tuple[StreamJobs, Frames]) -> None:
    streams, _ = jobs
    with pytest.raises(RequestError, match="rows and cols"):
        streams.start({"stream": "s", "cmd": "true", "pty": True, "rows": 0})
    with pytest.raises(RequestError, match="does not exist"):
        streams.start({"stream": "s", "cmd": "true", "cwd": "/workspace/none"})
    with pytest.raises(RequestError, match="no stream"):
        streams.get("nope")
    streams.start({"stream": "t", "cmd": "cat"})
    with pytest.raises(RequestError, match="exists"):
        streams.start({"stream": "t", "cmd": "cat"})
    with pytest.raises(RequestError, match="unknown signal"):
        streams.get("t").signal("DANCE")
    with pytest.raises(RequestError, match="terminal"):
        streams.get("t").resize(10, 10)
    streams.get("t").write(b"", eof=True)


def test_a_quiet_stream_is_slept_through_not_polled(
    jobs: tuple[StreamJobs, Frames], select_waits: list[float | None]
) -> None:
    """The pump of a job without output sleeps until output, the shell's exit (a pidfd, a kill too) or the
    deadline, instead of looking every 0.2 s (each look wakes a VM's CPU under emulation)."""
    waits = select_waits
    streams, frames = jobs
    streams.start({"stream": "s", "cmd": "sleep 2; echo done"})
    assert frames.wait_exit()["exit_code"] == 0 and frames.output() == 5
    assert waits[0] is None and len(waits) <= 6, waits  # polling: more than ten
    waits.clear()
    streams.start({"stream": "t", "cmd": "sleep 60"})
    time.sleep(0.5)
    streams.host_gone()  # the kill wakes the pump at once
    deadline = time.monotonic() + 5
    while len(streams):
        assert time.monotonic() < deadline, "the pump did not notice its killed job"
        time.sleep(0.05)
    assert len(waits) <= 6, waits
