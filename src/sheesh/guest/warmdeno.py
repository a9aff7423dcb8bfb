"""A Deno started ahead of the next run-ts (standard library only).

Deno's own start-up is most of a run-ts under emulation (seconds), so after a run the agent starts the next
Deno at once, as the same kind of one-job login shell every exec gets (exec user, own cgroup), ``exec``\\ ing
``deno run <the same permissions> runner.ts``. The runner loads a small TypeScript module (so module
loading and the TypeScript transpiler are warm too), then waits on its stdin for the URL of the next run's
entry module and imports it; the agent then closes stdin, so the user's code reads EOF there as it would from
/dev/null. A warm Deno serves exactly one run and is only used by a run whose Deno command line (permissions,
flags, args) and environment are the ones it was started with: anything else starts Deno cold, and the warm
one is then replaced by one for the new command line. It starts and waits at nice 19, like warm shells.

Only VMs that use run-ts pay for one (memory of an idle Deno). A snapshot keeps it, so the first run-ts of a VM
restored from one is not a cold start either. Restored copies share the state their Deno had at the snapshot:
V8 seeded Math.random from it, so the runner of a copy (``Warm.copied``) first replaces Math.random with a
generator seeded from ``crypto.getRandomValues``. Deno's crypto is fresh in each copy: its generator is seeded
from the guest kernel's on first use (the runner uses none before its entry arrives), and the refresh after the
restore reseeded the kernel's. A VM test checks both in two copies of one snapshot.
A warm spare (``sheesh.node.warmpool``) rehearses one run through its Deno (``scripts.rehearse``), which starts
the next one, and waits for it; the refresh of its claim says it is no copy, so the VM made of it gets a Deno
started after the restore, ready for its first run-ts.
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
const line = new TextDecoder().decode(new Uint8Array(chunks.flatMap((c) => [...c]))).trim();
const [entry, how] = line.split("\\t");
if (!entry) Deno.exit(0);
if (how === "reseed") {
  // a restored copy: V8 seeded Math.random from state every copy of the snapshot shares. Deno's crypto draws on
  // the guest kernel, reseeded at the restore. xoshiro128** from it, 53 bits per number like V8's.
  const s = crypto.getRandomValues(new Uint32Array(4));
  if ((s[0] | s[1] | s[2] | s[3]) === 0) s[0] = 1;
  const rotl = (x: number, k: number) => (x << k) | (x >>> (32 - k));
  const next = () => {
    const r = Math.imul(rotl(Math.imul(s[1], 5), 7), 9) >>> 0;
    const t = s[1] << 9;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 11);
    return r;
  };
  Math.random = function random() {
    return ((next() >>> 5) * 67108864 + (next() >>> 6)) / 9007199254740992;
  };
}
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
    copied: bool = False
    """Started before a restore made this machine a copy (``WarmDeno.restored``): its runner reseeds Math.random."""
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
        """Give Deno the entry module to import (and, in a copy, the word to reseed) and close its stdin; False
        when it died meanwhile."""
        fd, self.stdin_fd = self.stdin_fd, -1
        line = "file://" + entry + ("\treseed" if self.copied else "")
        try:
            os.write(fd, (line + "\n").encode())
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
        self._copies = 0
        """Restores as a copy (``restored``) so far: a Deno whose start began before the last one is a copy's."""
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
            copies = self._copies
        threading.Thread(target=self._start, args=(command, copies), daemon=True).start()

    def restored(self) -> None:
        """This machine is a restored copy of a snapshot: the warm Deno it holds, or the one being started,
        began before the restore, and its runner reseeds Math.random (``Warm.copied``)."""
        with self._lock:
            self._copies += 1
            if self._warm is not None:
                self._warm.copied = True

    def _start(self, command: DenoCommand, copies: int) -> None:
        try:
            warm: Warm | None = self._spawn(command)
        except OSError:
            warm = None
        with self._lock:
            if self._starting == command:
                self._starting = None
            if warm is None:
                return
            warm.copied = copies != self._copies  # (restored while it started)
            old, self._warm = self._warm, warm
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
