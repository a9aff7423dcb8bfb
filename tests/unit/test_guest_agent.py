"""The guest agent's exec, run on the host with /workspace mapped to a temp folder."""

import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sheesh.guest import execution
from sheesh.guest.agent import AgentConfig, set_clock
from sheesh.guest.execution import EXIT_TIMEOUT, RequestError, WarmShells
from sheesh.guest.execution import run_exec as _run_exec

Run = Callable[[AgentConfig, dict[str, Any]], dict[str, Any]]


@pytest.fixture
def config(tmp_path: Path) -> AgentConfig:
    ws = tmp_path / "ws"
    (ws / "sub").mkdir(parents=True)
    return AgentConfig(workspace=str(ws), uid=None, gid=None, home=str(ws))


@pytest.fixture(params=["cold", "warm"])
def run_exec(request: pytest.FixtureRequest, config: AgentConfig) -> Run:
    """Both exec paths: a fresh ``bash -lc`` and a pre-started login shell from the pool."""
    if request.param == "cold":
        return _run_exec
    shells = WarmShells(config, size=1)
    deadline = time.monotonic() + 5
    while not shells._ready and time.monotonic() < deadline:
        time.sleep(0.01)

    def run(cfg: AgentConfig, req: dict[str, Any]) -> dict[str, Any]:
        assert shells._ready, "warm shell pool did not fill"
        return _run_exec(cfg, req, shells)

    return run


def test_stdout_stderr_exit_code(run_exec: Run, config: AgentConfig) -> None:
    out = run_exec(config, {"cmd": "echo out; echo err >&2; exit 3"})
    assert out["stdout"] == "out\n"
    assert out["stderr"] == "err\n"
    assert out["exit_code"] == 3
    assert out["timed_out"] is False


def test_cwd_maps_into_workspace_and_env_is_set(run_exec: Run, config: AgentConfig) -> None:
    out = run_exec(config, {"cmd": 'pwd; echo "$GREETING"', "cwd": "/workspace/sub", "env": {"GREETING": "hi"}})
    assert out["stdout"] == f"{config.workspace}/sub\nhi\n"


def test_missing_cwd_is_refused(run_exec: Run, config: AgentConfig) -> None:
    with pytest.raises(RequestError, match="does not exist"):
        run_exec(config, {"cmd": "true", "cwd": "/workspace/nope"})


def test_timeout_kills_the_whole_process_group(run_exec: Run, config: AgentConfig, tmp_path: Path) -> None:
    marker = tmp_path / "survived"
    start = time.monotonic()
    out = run_exec(config, {"cmd": f"(sleep 1.5; touch {marker}) & sleep 30", "timeout_ms": 300})
    assert time.monotonic() - start < 3
    assert out["timed_out"] is True
    assert out["exit_code"] == EXIT_TIMEOUT
    time.sleep(1.8)
    assert not marker.exists(), "background child outlived the timeout"


def test_output_is_capped(run_exec: Run, config: AgentConfig) -> None:
    out = run_exec(config, {"cmd": "head -c 100000 /dev/zero | tr '\\0' a", "output_limit": 1000})
    assert len(out["stdout"]) == 1000
    assert out["truncated"] is True


def test_background_child_holding_stdout_does_not_block(run_exec: Run, config: AgentConfig) -> None:
    start = time.monotonic()
    out = run_exec(config, {"cmd": "sleep 5 & echo started"})
    assert out["stdout"] == "started\n"
    assert time.monotonic() - start < 2


def test_signal_death_maps_to_128_plus_signal(run_exec: Run, config: AgentConfig) -> None:
    out = run_exec(config, {"cmd": "kill -9 $$"})
    assert out["exit_code"] == 137


def test_non_string_cmd_is_refused(run_exec: Run, config: AgentConfig) -> None:
    with pytest.raises(RequestError):
        run_exec(config, {"cmd": ["ls"]})


def test_base_env_has_home_and_path(run_exec: Run, config: AgentConfig) -> None:
    out = run_exec(config, {"cmd": 'echo "$HOME|$PATH"'})
    home, path = out["stdout"].strip().split("|")
    assert home == config.home
    assert "/usr/bin" in path.split(os.pathsep)


def test_warm_shell_is_used_once_and_refilled(config: AgentConfig) -> None:
    shells = WarmShells(config, size=1)
    deadline = time.monotonic() + 5
    while not shells._ready and time.monotonic() < deadline:
        time.sleep(0.01)
    first_pid = shells._ready[0].proc.pid
    out = _run_exec(config, {"cmd": "echo $$; export LEAK=1"}, shells)
    assert out["stdout"] == f"{first_pid}\n"
    while not shells._ready and time.monotonic() < deadline + 5:
        time.sleep(0.01)
    out = _run_exec(config, {"cmd": 'echo "$$ ${LEAK:-none}"'}, shells)
    pid, leak = out["stdout"].split()
    assert int(pid) != first_pid and leak == "none"


def test_a_refill_asked_for_while_answering_starts_after_the_answer(config: AgentConfig) -> None:
    shells = WarmShells(config, size=1)
    deadline = time.monotonic() + 5
    while not shells.ready() and time.monotonic() < deadline:
        time.sleep(0.01)
    with shells.refills_after():
        assert _run_exec(config, {"cmd": "true"}, shells)["exit_code"] == 0
        time.sleep(0.5)  # a refill started by the job would have made a shell by now
        assert shells.ready() == 0
    while not shells.ready() and time.monotonic() < deadline + 5:
        time.sleep(0.01)
    assert shells.ready() == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to the exec user needs root")
@pytest.mark.parametrize("switch", ["sheesh-runas", "setpriv"])
def test_jobs_run_as_the_exec_user_with_no_other_group(
    switch: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the image's static ``sheesh-runas`` (compiled here as the image builder does), and through
    ``setpriv`` where there is none."""
    runas = tmp_path / "sheesh-runas"
    if switch == "sheesh-runas":
        source = Path(execution.__file__).parent.parent / "image" / "files" / "runas.c"
        subprocess.run(["gcc", "-static", "-Os", "-Wall", "-o", str(runas), str(source)], check=True)
    monkeypatch.setattr(execution, "RUNAS", str(runas))
    with tempfile.TemporaryDirectory(prefix="sheesh-user-ws-") as tmp:  # pytest's tmp_path is root's only
        ws = Path(tmp)
        ws.chmod(0o777)
        _check_exec_user(AgentConfig(workspace=str(ws), uid=1000, gid=1000, home=str(ws)))


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to the exec user needs root")
def test_sheesh_runas_refuses_root_and_bad_ids(tmp_path: Path) -> None:
    source = Path(execution.__file__).parent.parent / "image" / "files" / "runas.c"
    runas = str(tmp_path / "sheesh-runas")
    subprocess.run(["gcc", "-static", "-Os", "-Wall", "-o", runas, str(source)], check=True)
    ids = [runas, "1000", "1000", "sh", "-c", "id -u; id -g; id -G"]
    ok = subprocess.run(ids, check=False, capture_output=True, text=True)
    assert (ok.returncode, ok.stdout.split()) == (0, ["1000", "1000", "1000"]), ok
    for argv in (["0", "0", "id"], ["1000", "x", "id"], ["", "1000", "id"], ["1000", "1000"], ["-1", "1", "id"]):
        bad = subprocess.run([runas, *argv], check=False, capture_output=True, text=True)
        assert bad.returncode == 127 and bad.stdout == "" and "sheesh-runas" in bad.stderr, (argv, bad)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to the exec user needs root")
def test_sheesh_runas_joins_the_cgroup_changes_folder_and_drops_the_oom_shield(tmp_path: Path) -> None:
    """``-c``: the program writes itself ("0") into the cgroup's ``cgroup.procs`` (here a plain file: the
    kernel's side is tested on real VMs); ``-d``: it starts there; the agent's oom_score_adj is not inherited
    (the agent's is -1000; this host lets a test set 500, and the VM tests check the -1000 case)."""
    source = Path(execution.__file__).parent.parent / "image" / "files" / "runas.c"
    runas = str(tmp_path / "sheesh-runas")
    subprocess.run(["gcc", "-static", "-Os", "-Wall", "-o", runas, str(source)], check=True)
    cgroup = tmp_path / "job"
    cgroup.mkdir()
    (cgroup / "cgroup.procs").write_text("")
    with tempfile.TemporaryDirectory(prefix="sheesh-user-ws-") as ws:  # pytest's tmp_path is root's only
        shielded = f"echo 500 > /proc/self/oom_score_adj && exec {runas} -c {cgroup} -d {ws} 1000 1000 sh -c "
        out = subprocess.run(
            ["sh", "-c", shielded + "'pwd; cat /proc/self/oom_score_adj'"], check=False, capture_output=True, text=True
        )
        assert (out.returncode, out.stdout.split()) == (0, [ws, "0"]), out
    assert (cgroup / "cgroup.procs").read_text() == "0"
    for joins in (["-c", str(tmp_path / "none")], ["-d", "/nonexistent"]):
        argv = [*joins, "1000", "1000", "true"]
        bad = subprocess.run([runas, *argv], check=False, capture_output=True, text=True)
        assert bad.returncode == 127 and "sheesh-runas" in bad.stderr, (argv, bad)


def _check_exec_user(config: AgentConfig) -> None:
    shells = WarmShells(config, size=1)
    deadline = time.monotonic() + 5
    while not shells.ready() and time.monotonic() < deadline:
        time.sleep(0.01)
    for pool in (None, shells):  # a shell started on the spot, and a warm one
        out = _run_exec(config, {"cmd": "id -u; id -g; grep ^Groups: /proc/self/status; echo $$ $PPID"}, pool)
        uid, gid, groups, pids = out["stdout"].splitlines()
        assert (uid, gid, groups.split(":", 1)[1].strip()) == ("1000", "1000", "")
        assert int(pids.split()[1]) == os.getpid(), "the agent is the shell's parent: the switch became the shell"


def test_env_values_are_not_interpreted(run_exec: Run, config: AgentConfig) -> None:
    tricky = "$(echo pwned) `id` ' \" ; x"
    out = run_exec(config, {"cmd": 'printf %s "$V"', "env": {"V": tricky}})
    assert out["stdout"] == tricky


def test_bad_env_name_is_refused(run_exec: Run, config: AgentConfig) -> None:
    with pytest.raises(RequestError):
        run_exec(config, {"cmd": "true", "env": {"A;rm": "x"}})


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to uid 1000 needs root")
@pytest.mark.parametrize("warm", [False, True])
def test_commands_run_as_uid_1000(warm: bool) -> None:
    import shutil
    import tempfile

    ws = tempfile.mkdtemp(prefix="sheesh-ws-")
    try:
        os.chmod(ws, 0o755)
        os.chown(ws, 1000, 1000)
        cfg = AgentConfig(workspace=ws, uid=1000, gid=1000, home=ws)
        shells = WarmShells(cfg, size=1) if warm else None
        deadline = time.monotonic() + 5
        while shells is not None and not shells._ready and time.monotonic() < deadline:
            time.sleep(0.01)
        out = _run_exec(cfg, {"cmd": "id -u; id -g; id -G; touch mine; stat -c %u mine"}, shells)
        assert out["stderr"] == ""
        assert out["stdout"] == "1000\n1000\n1000\n1000\n"
    finally:
        shutil.rmtree(ws)


def test_requests_are_checked_against_their_op_types(config: AgentConfig) -> None:
    from sheesh.guest.agent import Agent

    agent = Agent(config, lambda _: None)
    with pytest.raises(RequestError, match=r"exec needs cmd$"):
        agent.dispatch({"op": "exec"})
    with pytest.raises(RequestError, match="upload_chunk needs data, upload"):
        agent.dispatch({"op": "upload_chunk"})
    with pytest.raises(RequestError, match="unknown op 'shutdown'"):
        agent.dispatch({"op": "shutdown"})
    assert agent.dispatch({"op": "ping"})["version"] == 1


def test_clock_op_sets_only_a_vms_clock(config: AgentConfig) -> None:
    """``clock`` after a pause: on a host (not in a VM) the agent must not touch the machine's clock."""
    config.in_vm = False
    assert set_clock(config, {"time_ns": time.time_ns()}) == {"done": False}
    with pytest.raises(RequestError):
        set_clock(config, {"time_ns": "soon"})


def test_a_restored_copy_keeps_its_warm_deno_and_has_it_reseed(config: AgentConfig, tmp_path: Path) -> None:
    """A snapshot's warm Deno serves the first run-ts of a VM restored from it: no cold start. The refresh of a
    restored copy marks it, and a Deno whose start began before that refresh: its runner is told to reseed
    Math.random (V8 seeded it from state all copies share). A Deno started after the refresh is not, nor is one
    in a machine that is no copy (a claimed spare: ``copy`` false). Ping says whether that Deno is still
    starting (busy) or ready (idle, waiting for its entry)."""
    from sheesh.guest.agent import Agent
    from sheesh.guest.warmdeno import DenoCommand, WarmDeno

    config.in_vm = False
    deno = WarmDeno(config)
    agent = Agent(config, lambda _: None, deno=deno)
    assert agent.dispatch({"op": "ping"})["deno"] == "none"
    # stands in for Deno: busy for a moment as it starts, then keeps what it is handed (its pid names the file)
    busy = f"i=0; while [ $i -lt 300000 ]; do i=$((i + 1)); done; exec cat >{tmp_path}/line-$$"
    command = DenoCommand(argv=("sh", "-c", busy), args=(), env=())
    deno.prepare(command)

    def pid_when(state: str) -> int:
        deadline = time.monotonic() + 10
        while agent.dispatch({"op": "ping"})["deno"] != state or deno._warm is None:
            assert time.monotonic() < deadline, f"the warm Deno never became {state}"
            time.sleep(0.05)
        return deno._warm.shell.proc.pid

    def handed(pid: int) -> str:  # (a rehearsal waits for the run to end)
        return (tmp_path / f"line-{pid}").read_text()

    first = pid_when("starting")
    assert pid_when("ready") == first
    agent.dispatch({"op": "refresh", "seed": "", "copy": False})
    assert pid_when("ready") == first and deno._warm is not None and not deno._warm.copied
    agent.dispatch({"op": "refresh", "seed": ""})
    assert agent.dispatch({"op": "ping"})["deno"] == "ready" and pid_when("ready") == first
    assert deno._warm is not None and deno._warm.copied
    # a rehearsal runs a no-op through the ready Deno (it reads its entry and ends) and starts the next
    assert agent.dispatch({"op": "rehearse"}) == {"rehearsed": True}
    entry, how = handed(first).rstrip("\n").split("\t")
    assert entry.startswith("file:///") and entry.endswith(".ts") and how == "reseed"
    second = pid_when("ready")
    assert second != first and deno._warm is not None and not deno._warm.copied
    assert agent.dispatch({"op": "rehearse"}) == {"rehearsed": True}
    assert "\t" not in handed(second)
    # one being started when the copy is refreshed is a copy's too
    third = pid_when("ready")
    taken = deno.take(command)
    assert taken is not None and taken.shell.proc.pid == third
    deno.stop(taken)
    assert agent.dispatch({"op": "rehearse"}) == {"rehearsed": False}  # none ready
    assert not os.path.exists(f"/proc/{third}")
    deno.prepare(command)
    agent.dispatch({"op": "refresh", "seed": ""})
    assert pid_when("ready") != third
    last = deno.take(command)
    assert last is not None and last.copied
    deno.stop(last)


def test_a_quiet_job_is_slept_through_not_polled(config: AgentConfig, select_waits: list[float | None]) -> None:
    """While a job runs without output the agent waits for its output, its shell's exit (a pidfd) or its
    deadline; it does not wake up every 50 ms to look (20 wakeups a second of a VM's CPU under emulation)."""
    waits = select_waits
    out = _run_exec(config, {"cmd": "sleep 1; echo done"})
    assert (out["stdout"], out["exit_code"]) == ("done\n", 0)
    assert len(waits) <= 6 and waits[0] is None, waits
    waits.clear()
    start = time.monotonic()
    out = _run_exec(config, {"cmd": "sleep 30", "timeout_ms": 500})
    assert out["timed_out"] and out["exit_code"] == EXIT_TIMEOUT and time.monotonic() - start < 5
    first = waits[0]
    assert first is not None and 0 < first <= 0.5 and len(waits) <= 6, waits  # the deadline, then the kill's end
