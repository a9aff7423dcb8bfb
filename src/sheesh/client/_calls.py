"""Every API call of the SDK as a ``Call`` (path, body, how to read the answer); the sync and async clients
send the same calls."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from sheesh.client._transport import Call
from sheesh.client.types import ApiKey, ExecLog, ExecResult, Image, ScriptResult, Snapshot, User, VmInfo


def _none(_: Any) -> None:
    return None


def _vm(vm_id: str, rest: str = "") -> str:
    return f"/v1/vms/{quote(vm_id, safe='')}{rest}"


def _drop_none(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}


# --- VMs --------------------------------------------------------------------------------------------------------
def create_vm(
    *,
    cpu: int,
    mem_mb: int,
    allow_ips: list[str],
    outbound_internet: bool,
    image_id: str | None,
    snapshot_id: str | None,
    disk_size_mb: int | None,
    kind: str,
    timeout_s: int | None,
    on_timeout: str,
) -> Call[VmInfo]:
    body = _drop_none(
        {
            "cpu": cpu,
            "memMb": mem_mb,
            "allowIps": allow_ips,
            "outboundInternet": outbound_internet,
            "imageId": image_id,
            "snapshotId": snapshot_id,
            "diskSizeMb": disk_size_mb,
            "kind": kind,
            "timeoutS": timeout_s,
            "onTimeout": on_timeout,
        }
    )
    return Call("POST", "/v1/vms", VmInfo.of, json=body)


def list_vms() -> Call[list[VmInfo]]:
    return Call("GET", "/v1/vms", lambda body: [VmInfo.of(v) for v in body])


def get_vm(vm_id: str) -> Call[VmInfo]:
    return Call("GET", _vm(vm_id), VmInfo.of)


def delete_vm(vm_id: str) -> Call[None]:
    return Call("DELETE", _vm(vm_id), _none)


def vm_action(vm_id: str, action: str) -> Call[None]:
    """``start``, ``stop``, ``pause`` or ``resume``."""
    return Call("POST", _vm(vm_id, f"/{action}"), _none)


def fork_vm(vm_id: str, count: int) -> Call[tuple[str, list[VmInfo], list[str]]]:
    def parse(body: dict[str, Any]) -> tuple[str, list[VmInfo], list[str]]:
        return body["snapshotId"], [VmInfo.of(v) for v in body["vms"]], list(body.get("failed", []))

    return Call("POST", _vm(vm_id, "/fork"), parse, json={"count": count})


def set_timeout(vm_id: str, timeout_s: int | None, on_timeout: str | None) -> Call[VmInfo]:
    return Call(
        "POST", _vm(vm_id, "/timeout"), VmInfo.of, json=_drop_none({"onTimeout": on_timeout}) | {"timeoutS": timeout_s}
    )


def vm_logs(vm_id: str, log_type: str, tail: int) -> Call[list[str]]:
    params = {"type": log_type, "tail": tail}
    return Call("GET", _vm(vm_id, "/logs"), lambda body: list(body["lines"]), params=params)


def exec_logs(vm_id: str, limit: int, log_type: str) -> Call[list[ExecLog]]:
    params = {"limit": limit, "type": log_type}
    return Call("GET", _vm(vm_id, "/exec-logs"), lambda body: [ExecLog.of(e) for e in body], params=params)


def exec_vm(
    vm_id: str, cmd: str, cwd: str | None, env: dict[str, str] | None, timeout_ms: int | None
) -> Call[ExecResult]:
    body = _drop_none({"cmd": cmd, "cwd": cwd, "env": env, "timeoutMs": timeout_ms})
    return Call("POST", _vm(vm_id, "/exec"), ExecResult.of, json=body, parse_with_headers=ExecResult.of)


def run_script(
    vm_id: str,
    language: str,
    *,
    code: str | None,
    path: str | None,
    args: list[str] | None,
    env: dict[str, str] | None,
    deno_flags: list[str] | None,
    timeout_ms: int | None,
) -> Call[ScriptResult]:
    """``language``: ``ts`` (Deno) or ``js`` (Node.js). ``env`` is a mapping here, ``["K=V"]`` on the wire."""
    body = _drop_none(
        {
            "code": code,
            "path": path,
            "args": args,
            "env": [f"{k}={v}" for k, v in env.items()] if env else None,
            "denoFlags": deno_flags if language == "ts" else None,
            "timeoutMs": timeout_ms,
        }
    )
    path = _vm(vm_id, f"/run-{language}")
    return Call("POST", path, ScriptResult.of, json=body, parse_with_headers=ScriptResult.of)


def upload(vm_id: str, dest: str) -> Call[None]:
    """The archive goes as the body (``send_file``)."""
    return Call(
        "POST", _vm(vm_id, "/files/upload"), _none, params={"dest": dest}, headers={"Content-Type": "application/gzip"}
    )


def add_firewall_rule(vm_id: str, src: str | None, action: str) -> Call[list[dict[str, str]]]:
    return Call(
        "POST",
        _vm(vm_id, "/firewall"),
        lambda body: list(body["rules"]),
        json=_drop_none({"src": src, "action": action}),
    )


def firewall(vm_id: str) -> Call[list[dict[str, str]]]:
    return Call("GET", _vm(vm_id, "/firewall"), lambda body: list(body["rules"]))


def clear_firewall(vm_id: str) -> Call[None]:
    return Call("DELETE", _vm(vm_id, "/firewall"), _none)


def add_port(vm_id: str, guest_port: int, protocol: str) -> Call[dict[str, Any]]:
    return Call("POST", _vm(vm_id, "/ports"), dict, json={"guestPort": guest_port, "protocol": protocol})


def remove_port(vm_id: str, host_port: int) -> Call[None]:
    return Call("DELETE", _vm(vm_id, f"/ports/{host_port}"), _none)


# --- snapshots ----------------------------------------------------------------------------------------------------
def create_snapshot(vm_id: str) -> Call[Snapshot]:
    return Call("POST", _vm(vm_id, "/snapshots"), Snapshot.of)


def list_snapshots() -> Call[list[Snapshot]]:
    return Call("GET", "/v1/snapshots", lambda body: [Snapshot.of(s) for s in body])


def get_snapshot(snapshot_id: str) -> Call[Snapshot]:
    return Call("GET", f"/v1/snapshots/{quote(snapshot_id, safe='')}", Snapshot.of)


def delete_snapshot(snapshot_id: str) -> Call[None]:
    return Call("DELETE", f"/v1/snapshots/{quote(snapshot_id, safe='')}", _none)


# --- images -------------------------------------------------------------------------------------------------------
def list_images() -> Call[list[Image]]:
    return Call("GET", "/v1/images", lambda body: [Image.of(i) for i in body])


def get_image(image_id: str) -> Call[Image]:
    return Call("GET", f"/v1/images/{quote(image_id, safe='')}", Image.of)


def create_image(name: str, description: str) -> Call[Image]:
    return Call("POST", "/v1/images", Image.of, json={"name": name, "description": description})


def set_default_image(image_id: str) -> Call[None]:
    return Call("POST", f"/v1/images/{quote(image_id, safe='')}/set-default", _none)


def delete_image(image_id: str) -> Call[None]:
    return Call("DELETE", f"/v1/images/{quote(image_id, safe='')}", _none)


def upload_image_part(image_id: str, part: str) -> Call[Image]:
    """``kernel`` or ``rootfs``; the file goes as the body (``send_file``)."""
    if part not in ("kernel", "rootfs"):
        raise ValueError("part must be kernel or rootfs")
    return Call("PUT", f"/v1/images/{quote(image_id, safe='')}/{part}", Image.of)


# --- accounts -----------------------------------------------------------------------------------------------------
def list_keys() -> Call[list[ApiKey]]:
    return Call("GET", "/v1/api-keys", lambda body: [ApiKey.of(k) for k in body])


def create_key(label: str, expires_at: str | None) -> Call[ApiKey]:
    return Call("POST", "/v1/api-keys", ApiKey.of, json=_drop_none({"label": label, "expiresAt": expires_at}))


def delete_key(key_id: str) -> Call[None]:
    return Call("DELETE", f"/v1/api-keys/{quote(key_id, safe='')}", _none)


def me() -> Call[User]:
    return Call("GET", "/v1/users/me", User.of)


def list_users() -> Call[list[User]]:
    return Call("GET", "/v1/users", lambda body: [User.of(u) for u in body])


def create_user(username: str, password: str, role: str) -> Call[User]:
    return Call("POST", "/v1/users", User.of, json={"username": username, "password": password, "role": role})


def set_role(user_id: str, role: str) -> Call[User]:
    return Call("PATCH", f"/v1/users/{quote(user_id, safe='')}", User.of, json={"role": role})


def delete_user(user_id: str) -> Call[None]:
    return Call("DELETE", f"/v1/users/{quote(user_id, safe='')}", _none)
