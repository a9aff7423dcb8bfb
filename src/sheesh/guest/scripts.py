"""run-ts (Deno) and run-js (Node.js) in the guest (standard library only).

Both run the user's code as a module imported by a generated entry that defines a global ``result``:
``result.set(value)`` returns JSON to the caller, ``result.error(err)`` ends the run with exit status 1 and
returns ``err`` (plain values unchanged; ``Error`` instances as ``{name, message}``, plus ``stack`` when the
request asks for it). An uncaught exception or unhandled rejection fills ``error`` the same way (and is still
printed to stderr). The result travels on stderr as one marker line tagged with a per-run nonce, which is
removed from the stderr the caller sees.

Deno runs with permissions denied except: read+write on /workspace, /tmp and /var/tmp; read on what DNS and
TLS need; ``--allow-env`` for the given keys; network as the VM's egress allows. ``denoFlags`` add more.
Node.js has no permission model in this version: its code runs as the exec user with the VM's limits.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import tempfile
import uuid
from typing import Any

from sheesh.guest.execution import (
    GUEST_WORKSPACE,
    RequestError,
    RunConfig,
    WarmShells,
    env_list,
    run_job,
    wait_job,
)
from sheesh.guest.protocol import ErrorKind
from sheesh.guest.warmdeno import DenoCommand, WarmDeno

DNS_TLS_READ = ("/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/ssl/certs", "/usr/share/ca-certificates")
SCRATCH_DIRS = ("/tmp", "/var/tmp")

_EMIT_BODY = """\
const __sheeshMark = "\\x1e%(nonce)s ";
const __sheeshStack = %(stack)s;
const __sheeshText = (kind, value) => {
  try { return JSON.stringify({ kind, value: value === undefined ? null : value }); }
  catch (e) { return JSON.stringify({ kind: "error", value: { name: "TypeError", message: String(e) } }); }
};
const __sheeshErr = (err) => !(err instanceof Error) ? err
  : __sheeshStack ? { name: err.name, message: err.message, stack: err.stack }
  : { name: err.name, message: err.message };
"""

DENO_ENTRY = (
    _EMIT_BODY
    + """\
const __sheeshEmit = (kind: string, value: unknown) =>
  Deno.stderr.writeSync(new TextEncoder().encode("\\n" + __sheeshMark + __sheeshText(kind, value) + "\\n"));
Object.defineProperty(globalThis, "result", { value: Object.freeze({
  set(value: unknown) { __sheeshEmit("result", value); },
  error(err: unknown) { __sheeshEmit("error", __sheeshErr(err)); Deno.exit(1); },
}) });
globalThis.addEventListener("error", (e: ErrorEvent) => __sheeshEmit("error", __sheeshErr(e.error)));
globalThis.addEventListener("unhandledrejection", (e: PromiseRejectionEvent) =>
  __sheeshEmit("error", __sheeshErr(e.reason)));
try { await import(%(module)s); } catch (e) { __sheeshEmit("error", __sheeshErr(e)); throw e; }
"""
)

NODE_ENTRY = (
    """\
import { createRequire } from "node:module";
import { writeSync } from "node:fs";
"""
    + _EMIT_BODY
    + """\
const __sheeshEmit = (kind, value) => writeSync(2, "\\n" + __sheeshMark + __sheeshText(kind, value) + "\\n");
Object.defineProperty(globalThis, "result", { value: Object.freeze({
  set(value) { __sheeshEmit("result", value); },
  error(err) { __sheeshEmit("error", __sheeshErr(err)); process.exit(1); },
}) });
globalThis.require = createRequire(%(require_base)s);
process.on("uncaughtExceptionMonitor", (err) => __sheeshEmit("error", __sheeshErr(err)));
try { await import(%(module)s); } catch (e) { __sheeshEmit("error", __sheeshErr(e)); throw e; }
"""
)


def split_result(stderr: bytes, nonce: str) -> tuple[bytes, dict[str, Any] | None]:
    """Remove the result marker lines from stderr; return (stderr, last marker payload)."""
    mark = b"\x1e" + nonce.encode() + b" "
    kept: list[bytes] = []
    found: dict[str, Any] | None = None
    for line in stderr.split(b"\n"):
        if line.startswith(mark):
            with contextlib.suppress(ValueError):
                found = json.loads(line[len(mark) :])
            if kept and kept[-1] == b"":
                kept.pop()  # the newline the marker was prefixed with
            continue
        kept.append(line)
    return b"\n".join(kept), found


def _module(config: RunConfig, req: dict[str, Any], run_dir: str, main: str, suffixes: tuple[str, ...]) -> str:
    """The specifier of the user's module: ``code`` written to ``main`` in the run folder, or ``path``."""
    code, path = req.get("code"), req.get("path")
    if (code is None) == (path is None):
        raise RequestError("exactly one of code or path is required")
    if path is None:
        with open(os.path.join(run_dir, main), "w") as fh:
            fh.write(str(code))
        return "./" + main
    norm = os.path.normpath(str(path))
    if not norm.endswith(suffixes) or not norm.startswith(GUEST_WORKSPACE + "/"):
        raise RequestError(f"path must be a {' or '.join(suffixes)} file under /workspace")
    module_path = config.map_path(norm)
    if not os.path.isfile(module_path):
        raise RequestError(f"{path} does not exist")
    return "file://" + module_path


def _has_flag(flags: list[str], *names: str) -> bool:
    return any(f == n or f.startswith(n + "=") for f in flags for n in names)


def deno_permissions(config: RunConfig, flags: list[str], env: dict[str, str], allow_net: object) -> list[str]:
    """Deno's permission flags: our defaults, except where ``flags`` (denoFlags) already grant that kind."""
    perms = ["--no-prompt"]
    everything = _has_flag(flags, "-A", "--allow-all")
    writable = [config.workspace, *SCRATCH_DIRS]
    if not everything and not _has_flag(flags, "-R", "--allow-read"):
        perms.append("--allow-read=" + ",".join([*writable, *DNS_TLS_READ]))
    if not everything and not _has_flag(flags, "-W", "--allow-write"):
        perms.append("--allow-write=" + ",".join(writable))
    if env and not everything and not _has_flag(flags, "-E", "--allow-env"):
        perms.append("--allow-env=" + ",".join(env))
    if not everything and not _has_flag(flags, "-N", "--allow-net"):
        if allow_net is True:
            perms.append("--allow-net")
        elif isinstance(allow_net, list) and allow_net:
            perms.append("--allow-net=" + ",".join(str(h) for h in allow_net))
    return perms


def _warm_eligible(flags: list[str]) -> bool:
    """Whether a warm Deno can serve a run with these denoFlags: its runner imports the entry, which needs
    read permission on the run folder (our default ``--allow-read`` has it)."""
    return not _has_flag(flags, "-R", "--allow-read") or _has_flag(flags, "-A", "--allow-all")


def _write_entry(config: RunConfig, req: dict[str, Any], language: str, run_dir: str, nonce: str) -> str:
    """Write the run's entry module (and ``code`` as its main module) into ``run_dir``; return its path."""
    stack = "true" if req.get("error_stack") else "false"
    if language == "ts":
        module = _module(config, req, run_dir, "main.ts", (".ts",))
        entry = os.path.join(run_dir, "entry.ts")
        text = DENO_ENTRY % {"nonce": nonce, "module": json.dumps(module), "stack": stack}
    else:
        module = _module(config, req, run_dir, "main.mjs", (".js", ".mjs", ".cjs"))
        entry = os.path.join(run_dir, "entry.mjs")
        base = json.dumps(os.path.join(config.workspace, "index.js"))
        text = NODE_ENTRY % {"nonce": nonce, "module": json.dumps(module), "stack": stack, "require_base": base}
    with open(entry, "w") as fh:
        fh.write(text)
    if (owner := config.owner()) is not None:
        for name in [run_dir, *(os.path.join(run_dir, n) for n in os.listdir(run_dir))]:
            os.chown(name, *owner)
    return entry


def run_script(
    config: RunConfig,
    req: dict[str, Any],
    language: str,
    binary: str,
    *,
    shells: WarmShells | None = None,
    deno: WarmDeno | None = None,
) -> dict[str, Any]:
    """Run ``req`` (``code`` or ``path``, ``args``, ``env`` ``["K=V"]``, ``timeout_ms``; run-ts also
    ``deno_flags`` and ``allow_net``; ``error_stack``) as ``language`` "ts" (Deno) or "js" (Node.js).
    run-ts uses ``deno``'s warm Deno when it was started for the same command line, and has the next one
    started after the run."""
    flags = [str(f) for f in req.get("deno_flags") or []] if language == "ts" else []
    if any(not f.startswith("-") for f in flags):
        raise RequestError("denoFlags must be flags (starting with -)")
    user_env = env_list([str(e) for e in req.get("env") or []])
    if not os.path.exists(binary):
        what = "deno" if language == "ts" else "node"
        raise RequestError(f"{what} is not installed in this image", ErrorKind.INTERNAL)
    args = [str(a) for a in req.get("args") or []]
    env = {"NO_COLOR": "1", "DENO_NO_UPDATE_CHECK": "1", **user_env}
    nonce = uuid.uuid4().hex
    head: tuple[str, ...] = (binary,)
    warmable: DenoCommand | None = None  # the command line a warm Deno can serve (and is started for)
    if language == "ts":
        head = (binary, "run", *deno_permissions(config, flags, user_env, req.get("allow_net")), *flags)
        if deno is not None and _warm_eligible(flags):
            warmable = DenoCommand(argv=head, args=tuple(args), env=tuple(env.items()))
    warm = deno.take(warmable) if deno is not None and warmable is not None else None
    run_dir = warm.run_dir if warm is not None else tempfile.mkdtemp(prefix=f"sheesh-{language}-")
    used = False
    try:
        entry = _write_entry(config, req, language, run_dir, nonce)
        limits = {"timeout_ms": req.get("timeout_ms"), "output_limit": req.get("output_limit")}
        if warm is not None and warm.hand(entry):
            used = True
            reply = wait_job(warm.shell, deno.cgroups if deno is not None else None, **limits)
        else:
            cmd = "exec " + shlex.join([*head, entry, *args])
            reply = run_job(config, shells, cwd=config.workspace, env=env, cmd=cmd, **limits)
    finally:
        if deno is not None and warm is not None and not used:
            deno.stop(warm)  # no run got it (a refused request, or it died): killed, reaped, folder removed
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
        if deno is not None and warmable is not None:
            deno.prepare(warmable)
    stderr, marker = split_result(reply.pop("stderr_bytes"), nonce)
    reply["stderr"] = stderr.decode(errors="replace")
    if marker is not None:
        reply["error" if marker.get("kind") == "error" else "result"] = marker.get("value")
    return reply


REHEARSAL = "console.log(0);\n"
REHEARSAL_TIMEOUT_MS = 60_000


def rehearse(config: RunConfig, deno: WarmDeno | None) -> dict[str, Any]:
    """``protocol.Op.REHEARSE``: a run of ``REHEARSAL`` through the ready warm Deno (output dropped), then the
    next Deno started for the same command line, as after any run."""
    command = deno.ready_command() if deno is not None else None
    warm = deno.take(command) if deno is not None and command is not None else None
    if deno is None or command is None or warm is None:
        return {"rehearsed": False}
    used = False
    try:
        entry = _write_entry(config, {"code": REHEARSAL}, "ts", warm.run_dir, uuid.uuid4().hex)
        if warm.hand(entry):
            used = True
            wait_job(warm.shell, deno.cgroups, timeout_ms=REHEARSAL_TIMEOUT_MS, output_limit=4096)
    finally:
        if used:
            shutil.rmtree(warm.run_dir, ignore_errors=True)
        else:
            deno.stop(warm)
        deno.prepare(command)
    return {"rehearsed": used}
