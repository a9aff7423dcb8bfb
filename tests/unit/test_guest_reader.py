"""The agent's request reader: an exec runs on the thread that read it, and hands reading over when the host
sends more while it runs (``agent.Reader``, ``guest.handoff``). Over a real socket pair, real shells."""

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sheesh.guest import agent as agent_mod
from sheesh.guest import execution, handoff, protocol
from sheesh.guest.agent import Agent, AgentConfig, Reader, serve_connection


class Host:
    """The host's end of an agent connection: send frames, receive replies by id."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.decoder = protocol.FrameDecoder()
        self.replies: dict[int, tuple[float, dict[str, Any]]] = {}

    def send(self, *requests: dict[str, Any]) -> None:
        self.sock.sendall(b"".join(protocol.encode(r) for r in requests))

    def reply(self, rid: int, timeout_s: float = 10) -> tuple[float, dict[str, Any]]:
        """When the reply to ``rid`` arrived (monotonic) and the reply."""
        self.sock.settimeout(timeout_s)
        while rid not in self.replies:
            data = self.sock.recv(65536)
            assert data, "the agent closed the connection"
            for msg in self.decoder.feed(data):
                self.replies[msg["id"]] = (time.monotonic(), msg)
        return self.replies[rid]


@pytest.fixture
def config(tmp_path: Path) -> AgentConfig:
    ws = tmp_path / "ws"
    ws.mkdir()
    return AgentConfig(workspace=str(ws), uid=None, gid=None, home=str(ws), in_vm=False)


@pytest.fixture
def submitted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of what goes to the agent's worker threads."""
    names: list[str] = []
    pool = agent_mod._POOL

    class Counting:
        def submit(self, fn: Any, *args: Any) -> Any:
            names.append(getattr(fn, "__name__", repr(fn)))
            return pool.submit(fn, *args)

    monkeypatch.setattr(agent_mod, "_POOL", Counting())
    return names


@pytest.fixture
def host(config: AgentConfig) -> Iterator[Host]:
    ours, theirs = socket.socketpair()
    served = threading.Thread(target=serve_connection, args=(config, theirs), daemon=True)
    served.start()
    try:
        yield Host(ours)
    finally:
        ours.close()
        served.join(10)
    assert not served.is_alive(), "the agent did not notice the host closing the connection"


def _exec(rid: int, cmd: str, **more: Any) -> dict[str, Any]:
    return {"id": rid, "op": "exec", "cmd": cmd, **more}


def test_an_exec_is_answered_by_the_thread_that_read_it(host: Host, submitted: list[str]) -> None:
    for rid in range(1, 4):
        host.send(_exec(rid, f"echo {rid}"))
        assert host.reply(rid)[1]["stdout"] == f"{rid}\n"
    host.send({"id": 9, "op": "ping"})
    assert host.reply(9)[1]["ok"]
    assert submitted == []  # no worker thread woken for any of them


def test_a_reply_says_how_long_the_agent_took(host: Host) -> None:
    """``took_ms``: from the decoded request to the reply, the job's run inside it, the round trip around it."""
    sent = time.monotonic()
    host.send(_exec(1, "sleep 0.3"))
    arrived, reply = host.reply(1)
    assert reply["exit_code"] == 0
    assert 300 <= reply["took_ms"] <= (arrived - sent) * 1000
    host.send({"id": 2, "op": "nosuch"})  # errors say it too
    _, failed = host.reply(2)
    assert not failed["ok"] and 0 <= failed["took_ms"] < 300


def test_requests_sent_during_an_exec_are_answered_at_once(host: Host, submitted: list[str]) -> None:
    """While an exec runs, its thread watches the connection: a ping, another exec and a file op sent meanwhile
    are answered before it ends, by another thread reading; that one goes on reading afterwards."""
    started = time.monotonic()
    host.send(_exec(1, "sleep 1; echo slow"))
    time.sleep(0.2)
    host.send({"id": 2, "op": "ping"})
    ping_at, ping = host.reply(2)
    host.send(_exec(3, "echo quick"))
    quick_at, quick = host.reply(3)
    slow_at, slow = host.reply(1)
    assert ping["ok"] and quick["stdout"] == "quick\n" and slow["stdout"] == "slow\n"
    assert ping_at - started < 0.8 and quick_at - started < 0.8 < slow_at - started
    assert submitted == ["run"]  # one hand-off of the reading, no worker per request
    host.send(_exec(4, "echo after"), {"id": 5, "op": "ping"})
    assert host.reply(4)[1]["stdout"] == "after\n" and host.reply(5)[1]["ok"]


def test_execs_sent_together_run_side_by_side(host: Host) -> None:
    """Frames that arrive in one read: all but the last go to worker threads, the last runs on the reader."""
    started = time.monotonic()
    host.send(*(_exec(rid, "sleep 0.6; echo done") for rid in (1, 2, 3)))
    outs = [host.reply(rid)[1] for rid in (1, 2, 3)]
    assert all(o["exit_code"] == 0 for o in outs)
    assert time.monotonic() - started < 1.5  # not 3 x 0.6 s one after the other


def test_a_handoff_fires_once() -> None:
    fired: list[bool] = []
    passed = handoff.Handoff(-1, lambda: fired.append(True))
    assert handoff.current() is None  # this thread reads no requests
    with passed.watching():
        assert handoff.current() is passed
        handoff.release()
        assert handoff.current() is None and fired == [True]
        handoff.release()
    assert fired == [True] and handoff.current() is None


def test_a_timed_out_exec_hands_reading_over_before_killing(config: AgentConfig) -> None:
    """Killing a timed-out job's cgroup may take seconds: the thread gives up reading first."""
    seen: list[object] = []

    class Cgroup:
        def kill(self) -> None:
            seen.append("kill")

        def kill_and_wait(self) -> bool:
            seen.append(handoff.current())
            return True

    fired: list[bool] = []
    shell = execution.spawn_shell(config, None)
    shell.cgroup = Cgroup()  # type: ignore[assignment]
    execution.send_job(shell, config.workspace, {}, "sleep 30")
    quiet, other_end = os.pipe()  # a host connection that sends nothing
    try:
        with handoff.Handoff(quiet, lambda: fired.append(True)).watching():
            out = execution.wait_job(shell, None, timeout_ms=300, output_limit=None)
    finally:
        os.close(quiet)
        os.close(other_end)
    assert out["timed_out"] and fired == [True] and seen == ["kill", None]


def _port(*chunks: bytes) -> Callable[[], bytes]:
    """A virtio-serial port's reads: ``chunks`` (b"": no host connected), then an error."""
    reads = iter(chunks)

    def read() -> bytes:
        try:
            return next(reads)
        except StopIteration:
            raise OSError("port gone") from None

    return read


def test_the_reading_thread_failing_stops_the_agent(config: AgentConfig) -> None:
    """The port reader raising (not EOF) ends ``serve`` with that error, whichever thread read."""
    agent = Agent(config, lambda _: None)
    with pytest.raises(OSError, match="port gone"):
        Reader(agent, -1, _port(protocol.encode({"id": 1, "op": "ping"})), reconnects=True).serve()


def test_the_port_reader_waits_for_a_host_after_eof(config: AgentConfig) -> None:
    """EOF on the virtio-serial port means no host for now: the reader tells the agent the host left and reads
    again; requests of the next host are answered."""
    sent: list[bytes] = []
    agent = Agent(config, sent.append)
    gone: list[bool] = []
    agent.host_gone = lambda: gone.append(True)  # type: ignore[method-assign]
    read = _port(protocol.encode({"id": 1, "op": "ping"}), b"", b"", protocol.encode({"id": 2, "op": "ping"}))
    with pytest.raises(OSError, match="port gone"):
        Reader(agent, -1, read, reconnects=True).serve()
    replies = [msg for frame in sent for msg in protocol.FrameDecoder().feed(frame)]
    assert [r["id"] for r in replies] == [1, 2] and gone == [True]  # one host left, once


def test_a_wake_is_not_answered(host: Host, submitted: list[str]) -> None:
    """``wake`` (the host's hint that a request is coming) is read and dropped: no reply, no worker thread."""
    host.send({"op": "wake"}, {"id": 1, "op": "ping"})
    assert host.reply(1)[1]["ok"]
    host.send({"id": 2, "op": "ping"})
    assert host.reply(2)[1]["ok"] and set(host.replies) == {1, 2} and submitted == []
