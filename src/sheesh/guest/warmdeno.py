"""A Deno started ahead of the next run-ts (standard library only).

Deno's own start-up is most of a run-ts under emulation (seconds), so after a run the agent starts the next
Deno at once, as the same kind of one-job login shell every exec gets (exec user, own cgroup), ``exec``\\ ing
``deno run <the same permissions> runner.ts``. The runner loads a small TypeScript module (so module
loading and the TypeScript transpiler are warm too), then waits on its stdin for the URL of the next run's
entry module and imports it; the agent then closes stdin, so the user's code reads EOF there as it would from
/dev/null. A warm Deno serves exactly one run and is only used by a run whose Deno command line (permissions,
flags, args) and environment are the ones it was started with: anything else starts Deno cold, and the warm
one is then replaced by one for the new command line. It starts and waits at nice 19, like warm shells.

Only VMs that use run-ts pay for one (memory of an idle Deno). After a restore or clone the warm Deno is
dropped and started again: a copy would share its random state (V8's and Deno's RNG seeds) with the original.
A warm spare (``sheesh.node.warmpool``) starts its own at its restore in the same way, waits until it is
``ready``, rehearses one run through it (``scripts.rehearse``) and waits for the next; the refresh of its claim
says it is no copy, so the VM made of it keeps that Deno, ready for its first run-ts.
Runs with their own ``--allow-read`` (without /tmp, where entries are written) always start cold: the runner's
import of the entry needs read permission on it.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass

from sheesh.guest.cgroups import ExecCgroups
from sheesh.guest.execution import REFILL_NICE, RunConfig, Shell, renice, send_job, spawn_shell

_HZ = os.sysconf("SC_CLK_TCK")

RUNNER = """\
await import("./warmup.ts");
const chunks: Uint8Array[] = [];
const buf = new Uint8Array(4096);
for (;;) {
  const n = await Deno.stdin.read(buf);
  if (n === null) break;
  chunks.push(buf.slice(0, n));
  if (buf.subarray(0, n).includes(10)) break;
}
const entry = new TextDecoder().decode(new Uint8Array(chunks.flatMap((c) => [...c]))).trim();
if (!entry) Deno.exit(0);
await import(entry);
"""
RUNNER_FILE = "runner.ts"
WARMUP = """\
// loaded by the runner while it waits: module loading and TypeScript are ready (and, under emulation,
// their code translated) before a run needs them
interface Warm { n: number }
const warm: Warm = { n: [1, 2, 3].map((x: number) => x * 2).length };
export default JSON.parse(JSON.stringify(warm)) as Warm;
"""


@dataclass(frozen=True)
class DenoCommand:
    """What a warm Deno must have been started with to serve a run: its argv after the runner file is put
    where the entry would be, and its environment."""

    argv: tuple[str, ...]
    """``deno run <permissions> <flags>`` (before the module)."""
    args: tuple[str, ...]
    """The script's arguments (``Deno.args``: fixed when Deno starts)."""
    env: tuple[tuple[str, str], ...]


SETTLE_S = 0.25
"""A warm Deno is ready (its start-up over) once it used under ``IDLE_SHARE`` of a CPU in two spans in a row of
at least this long (``Warm.settled``)."""
IDLE_SHARE = 0.05


def cpu_ticks(pid: int) -> int:
    """CPU time (user + system, in clock ticks) process ``pid`` used so far, all of its threads together."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


@dataclass
class Warm:
    """A started Deno waiting for its entry: the shell (now Deno), the write end of its stdin, its folder."""

    command: DenoCommand
    shell: Shell
    stdin_fd: int
    run_dir: str
    sample: tuple[float, int] | None = None
    """(monotonic time, CPU ticks) when ``settled`` last measured."""
    idle: int = 0
    """Measurements in a row that found it idle."""

    def alive(self) -> bool:
        return self.shell.proc.poll() is None

    def settled(self) -> bool:
        """Whether Deno's start-up is over: it used under ``IDLE_SHARE`` of a CPU in each of the last two
        spans between measurements at least ``SETTLE_S`` apart (each call measures, when the last is that old;
        two spans: a machine that was not scheduled for a moment does not pass for an idle Deno)."""
        try:
            now, ticks = time.monotonic(), cpu_ticks(self.shell.proc.pid)
        except (OSError, IndexError, ValueError):
            return False
        if self.sample is None or now - self.sample[0] >= SETTLE_S:
            if self.sample is not None:
                used_s = (ticks - self.sample[1]) / _HZ
                self.idle = self.idle + 1 if used_s < IDLE_SHARE * (now - self.sample[0]) else 0
            self.sample = (now, ticks)
        return self.idle >= 2

    def hand(self, entry: str) -> bool:
        """Give Deno the entry module to import and close its stdin; False when it died meanwhile."""
        fd, self.stdin_fd = self.stdin_fd, -1
        try:
            os.write(fd, ("file://" + entry + "\n").encode())
        except BrokenPipeError:
            return False
        finally:
            os.close(fd)
        return True


class WarmDeno:
    """At most one warm Deno per agent, for the command line of the last run-ts."""

    def __init__(self, config: RunConfig, cgroups: ExecCgroups | None = None) -> None:
        self.config = config
        self.cgroups = cgroups
        self._warm: Warm | None = None
        self._lock = threading.Lock()
        self._generation = 0
        """Counts discards: a start begun before one is thrown away when it completes."""
        self._starting: DenoCommand | None = None
        """The command line a Deno is being started for (a second ``prepare`` for it starts none)."""

    def state(self) -> str:
        """``none``, ``starting`` (a Deno is being started, or its start-up still uses the CPU) or ``ready``."""
        with self._lock:
            warm, starting = self._warm, self._starting
        if starting is not None:
            return "starting"
        if warm is None or not warm.alive():
            return "none"
        return "ready" if warm.settled() else "starting"

    def ready_command(self) -> DenoCommand | None:
        """The command line of the warm Deno, when it is ``ready``."""
        with self._lock:
            warm = None if self._starting is not None else self._warm
        return warm.command if warm is not None and warm.alive() and warm.settled() else None

    def take(self, command: DenoCommand) -> Warm | None:
        """The warm Deno for ``command`` (at normal priority), or None."""
        with self._lock:
            warm = self._warm
            if warm is None or warm.command != command or not warm.alive():
                return None
            self._warm = None
        renice(warm.shell, 0)
        return warm

    def prepare(self, command: DenoCommand) -> None:
        """Start a warm Deno for ``command`` in the background (replacing one for another command line)."""
        with self._lock:
            if self._starting == command:
                return
            if self._warm is not None and self._warm.command == command and self._warm.alive():
                return
            self._starting = command
            generation = self._generation
        threading.Thread(target=self._start, args=(command, generation), daemon=True).start()

    def discard(self) -> None:
        """Stop the warm Deno, or the one being started (after a restore: it must not serve a clone), and start
        it again for the same command line."""
        with self._lock:
            self._generation += 1
            old, self._warm = self._warm, None
            again = old.command if old is not None else self._starting  # (a start under way is stale too)
            self._starting = None
        if old is not None:
            self.stop(old)
        if again is not None:
            self.prepare(again)

    def _start(self, command: DenoCommand, generation: int) -> None:
        try:
            warm: Warm | None = self._spawn(command)
        except OSError:
            warm = None
        with self._lock:
            stale = generation != self._generation
            if not stale and self._starting == command:
                self._starting = None
            if warm is None:
                return
            old = None if stale else self._warm
            if not stale:
                self._warm = warm
        if stale:
            self.stop(warm)
        if old is not None:
            self.stop(old)

    def _spawn(self, command: DenoCommand) -> Warm:
        run_dir = tempfile.mkdtemp(prefix="sheesh-ts-")
        runner = os.path.join(run_dir, RUNNER_FILE)
        warmup = os.path.join(run_dir, "warmup.ts")
        for name, text in ((runner, RUNNER), (warmup, WARMUP)):
            with open(name, "w") as fh:
                fh.write(text)
        if (owner := self.config.owner()) is not None:
            for name in (run_dir, runner, warmup):
                os.chown(name, *owner)
        stdin_r, stdin_w = os.pipe()
        try:
            shell = spawn_shell(self.config, self.cgroups, stdin_fd=stdin_r)
        except BaseException:
            os.close(stdin_w)
            raise
        finally:
            os.close(stdin_r)
        renice(shell, REFILL_NICE)  # before the exec: every thread Deno starts inherits it
        argv = [*command.argv, runner, *command.args]
        send_job(shell, self.config.workspace, dict(command.env), "exec " + shlex.join(argv))
        return Warm(command, shell, stdin_w, run_dir)

    def stop(self, warm: Warm) -> None:
        """Kill a warm Deno (and reap it), close its pipes, remove its folder: one no run will use."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(warm.shell.proc.pid, signal.SIGKILL)
        if warm.shell.cgroup is not None:
            warm.shell.cgroup.kill_and_wait()
        with contextlib.suppress(subprocess.TimeoutExpired):
            warm.shell.proc.wait(10)
        for fd in (warm.stdin_fd, warm.shell.out_fd, warm.shell.err_fd):  # (send_job closed the job pipe)
            if fd is not None and fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        if warm.shell.cgroup is not None and self.cgroups is not None:
            self.cgroups.release(warm.shell.cgroup)
        shutil.rmtree(warm.run_dir, ignore_errors=True)
