"""karma.run's KVM endpoint (``POST /``): expressions evaluated over sheesh's own records.

Each resource is a model with a tag (``vms``, ``snapshots``, ``images``, ``nodes``, ``apiKeys``, ``_user``,
``workspaceTypes``, ``deployments``, ``instances``, ``reservations``, ``vpnClients``, ``ciProjects``, ``ciJobs``)
plus karma's own ``_tag`` and ``_model``. A user sees their own records; admins see all. Secrets (password
and key hashes, TOTP secrets) are never part of a record.

An expression is a JSON object with one key, the function, and its argument (karma.run's form); arguments
that are lists hold several sub-expressions. Literals: ``{"string": "x"}``, ``{"int": 1}``, ``{"float": 1.5}``,
``{"bool": true}``, ``{"null": null}``, ``{"list": [...]}``, ``{"struct": {...}}``; a bare string, number or
boolean stands for itself (the seed's ``{"all": {"tag": "_tag"}}``). Functions: ``all``, ``tag``, ``model``,
``get``, ``ref``, ``first``, ``length``, ``filter``, ``mapList``, ``field``, ``equal``, ``and``, ``or``,
``not``, ``gt``, ``lt``, ``if``, ``metarialize``, and ``{"function": [["x"], body]}`` with ``{"scope": "x"}``
for the functions ``filter`` and ``mapList`` take. Evaluation is bounded in depth, steps, time and result size.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sheesh.errors import InvalidInputError
from sheesh.models import ApiKey, Snapshot, SnapshotKind, User, Vm
from sheesh.store.repo import Store
from sheesh.wire import to_wire
from sheesh.workspaces import CiJob, CiProject, Deployment, Instance, Reservation, VpnClient, WorkspaceType

MAX_DEPTH = 64
MAX_STEPS = 200_000
MAX_SECONDS = 2.0
MAX_RESULT_BYTES = 8 * 1024 * 1024


class KvmError(InvalidInputError):
    """An expression that cannot be evaluated; the message names the path of the failing sub-expression."""


@dataclass(frozen=True)
class Record:
    model: str
    id: str
    created: datetime | None
    value: dict[str, Any]


@dataclass(frozen=True)
class Ref:
    model: str
    id: str


@dataclass(frozen=True)
class Function:
    params: list[str]
    body: Any


def _public_user(u: User) -> dict[str, Any]:
    return {"id": u.id, "username": u.username, "role": u.role.value, "created": u.created_at.isoformat(),
            "totpEnabled": u.totp_enabled}  # fmt: skip


def _public_key(k: ApiKey) -> dict[str, Any]:
    expires = k.expires_at.isoformat() if k.expires_at else None
    return {"id": k.id, "label": k.label, "userId": k.user_id, "created": k.created_at.isoformat(), "expires": expires}


@dataclass
class Universe:
    """The records one principal may read, by model tag (built lazily, once per query)."""

    store: Store
    user_id: str
    admin: bool
    nodes: list[dict[str, Any]]
    _cache: dict[str, list[Record]] = field(default_factory=dict)

    def _mine(self, owner: str | None) -> bool:
        return self.admin or owner == self.user_id

    def _load(self, tag: str) -> list[Record]:
        s = self.store
        loaders: dict[str, Callable[[], list[Record]]] = {
            "vms": lambda: [_rec(tag, v.id, v.created_at, v) for v in s.list_vms() if self._mine(v.owner_id)],
            "snapshots": lambda: [
                _rec(tag, x.id, x.created_at, x)
                for x in s.list_snapshots()
                if x.kind == SnapshotKind.USER and self._mine(x.owner_id)
            ],
            "images": lambda: [_rec(tag, i.image.id, i.image.created_at, i.image) for i in s.list_images()],
            "nodes": lambda: [Record(tag, str(n["name"]), None, n) for n in self.nodes],
            "apiKeys": lambda: [
                Record(tag, k.id, k.created_at, _public_key(k))
                for u in s.list_users()
                if self._mine(u.id)
                for k in s.list_api_keys(u.id)
            ],
            "_user": lambda: [
                Record(tag, u.id, u.created_at, _public_user(u)) for u in s.list_users() if self._mine(u.id)
            ],
        }
        kinds: dict[str, type[Any]] = {
            "workspaceTypes": WorkspaceType,
            "deployments": Deployment,
            "instances": Instance,
            "reservations": Reservation,
            "vpnClients": VpnClient,
            "ciProjects": CiProject,
            "ciJobs": CiJob,
        }
        if tag in loaders:
            return loaders[tag]()
        if tag in kinds:
            recs = s.list_records(kinds[tag])
            return [_rec(tag, r.id, r.created_at, r) for r in recs if self._mine(getattr(r, "owner_id", self.user_id))]
        if tag == "_tag":
            return [Record(tag, t, None, {"tag": t, "model": t}) for t in TAGS]
        if tag == "_model":
            return [Record(tag, t, None, {"id": t, "tag": t}) for t in TAGS]
        raise KeyError(tag)

    def all(self, tag: str) -> list[Record]:
        if tag not in self._cache:
            self._cache[tag] = self._load(tag)
        return self._cache[tag]


TAGS = (
    "_tag",
    "_model",
    "_user",
    "vms",
    "snapshots",
    "images",
    "nodes",
    "apiKeys",
    "workspaceTypes",
    "deployments",
    "instances",
    "reservations",
    "vpnClients",
    "ciProjects",
    "ciJobs",
)


def _rec(tag: str, rec_id: str, created: datetime, obj: Vm | Snapshot | Any) -> Record:
    value = to_wire(obj) if dataclasses.is_dataclass(obj) else dict(obj)
    return Record(tag, rec_id, created, value)


LITERALS = {"string": str, "int": int, "float": float, "bool": bool}


class Evaluator:
    def __init__(self, universe: Universe) -> None:
        self.universe = universe
        self.steps = 0
        self.deadline = time.monotonic() + MAX_SECONDS

    def run(self, expr: Any) -> Any:
        result = plain(self.eval(expr, "", {}, 0))
        size = len(json.dumps(result, default=str))
        if size > MAX_RESULT_BYTES:
            raise KvmError(f"the result is larger than {MAX_RESULT_BYTES} bytes")
        return result

    def eval(self, expr: Any, path: str, scope: dict[str, Any], depth: int) -> Any:
        self.steps += 1
        if depth > MAX_DEPTH:
            raise KvmError(f"at {path or '/'}: expression nested deeper than {MAX_DEPTH}")
        if self.steps > MAX_STEPS or time.monotonic() > self.deadline:
            raise KvmError("the expression takes too long (step or time limit)")
        if expr is None or isinstance(expr, str | int | float | bool):
            return expr
        if isinstance(expr, list):
            return [self.eval(e, f"{path}[{i}]", scope, depth + 1) for i, e in enumerate(expr)]
        if not isinstance(expr, dict) or len(expr) != 1:
            raise KvmError(f"at {path or '/'}: an expression is an object with one function name")
        ((name, arg),) = expr.items()
        here = f"{path}/{name}"
        if name in LITERALS:
            kind = LITERALS[name]
            if not isinstance(arg, kind) or (kind is int and isinstance(arg, bool)):
                raise KvmError(f"at {here}: expected a {name}")
            return arg
        if name == "null":
            return None
        if name == "list":
            return [self.eval(e, f"{here}[{i}]", scope, depth + 1) for i, e in enumerate(_list(arg, here))]
        if name == "struct":
            if not isinstance(arg, dict):
                raise KvmError(f"at {here}: expected an object of fields")
            return {k: self.eval(v, f"{here}.{k}", scope, depth + 1) for k, v in arg.items()}
        if name == "function":
            params = _list(arg, here)
            if len(params) != 2 or not isinstance(params[0], list) or not all(isinstance(p, str) for p in params[0]):
                raise KvmError(f'at {here}: expected [["param", ...], body]')
            return Function(params[0], params[1])
        if name == "scope":
            if not isinstance(arg, str) or arg not in scope:
                raise KvmError(f"at {here}: no parameter {arg!r} in scope")
            return scope[arg]
        handler = FUNCTIONS.get(name)
        if handler is None:
            raise KvmError(f"at {here}: unknown function {name!r}")
        return handler(self, arg, here, scope, depth + 1)

    def call(self, fn: Any, args: list[Any], path: str, scope: dict[str, Any], depth: int) -> Any:
        if not isinstance(fn, Function) or len(fn.params) != len(args):
            raise KvmError(f"at {path}: expected a function of {len(args)} parameter(s)")
        return self.eval(fn.body, f"{path}/function", {**scope, **dict(zip(fn.params, args, strict=True))}, depth)

    def args(self, arg: Any, n: int, path: str, scope: dict[str, Any], depth: int) -> list[Any]:
        items = _list(arg, path)
        if len(items) != n:
            raise KvmError(f"at {path}: expected {n} arguments")
        return [self.eval(a, f"{path}[{i}]", scope, depth) for i, a in enumerate(items)]


def _list(arg: Any, path: str) -> list[Any]:
    if not isinstance(arg, list):
        raise KvmError(f"at {path}: expected a list of arguments")
    return arg


def _tag(value: Any, path: str) -> str:
    tag = value.id if isinstance(value, Ref) and value.model == "_model" else value
    if not isinstance(tag, str) or tag not in TAGS:
        raise KvmError(f"at {path}: unknown model {tag!r} (models: {', '.join(TAGS)})")
    return tag


def _all(ev: Evaluator, arg: Any, path: str, scope: dict[str, Any], depth: int) -> Any:
    return list(ev.universe.all(_tag(ev.eval(arg, path, scope, depth), path)))


def _model_ref(ev: Evaluator, arg: Any, path: str, scope: dict[str, Any], depth: int) -> Any:
    return Ref("_model", _tag(ev.eval(arg, path, scope, depth), path))


def _ref(ev: Evaluator, arg: Any, path: str, scope: dict[str, Any], depth: int) -> Any:
    model, rec_id = ev.args(arg, 2, path, scope, depth)
    if not isinstance(rec_id, str):
        raise KvmError(f"at {path}: a record id is a string")
    return Ref(_tag(model, path), rec_id)


def _get(ev: Evaluator, arg: Any, path: str, scope: dict[str, Any], depth: int) -> Any:
    ref = ev.eval(arg, path, scope, depth)
    if not isinstance(ref, Ref):
        raise KvmError(f"at {path}: expected a ref")
    found = next((r for r in ev.universe.all(ref.model) if r.id == ref.id), None)
    if found is None:
        raise KvmError(f"at {path}: no {ref.model} record {ref.id}")
    return found


def _seq(ev: Evaluator, arg: Any, path: str, scope: dict[str, Any], depth: int) -> list[Any]:
    value = ev.eval(arg, path, scope, depth)
    if not isinstance(value, list):
        raise KvmError(f"at {path}: expected a list")
    return value


def _first(ev: Evaluator, arg: Any, path: str, scope: dict[str, Any], depth: int) -> Any:
    items = _seq(ev, arg, path, scope, depth)
    return items[0] if items else None


def _length(ev: Evaluator, arg: Any, path: str, scope: dict[str, Any], depth: int) -> Any:
    return len(_seq(ev, arg, path, scope, depth))


def _filter(ev: Evaluator, arg: Any, path: str, scope: dict[str, Any], depth: int) -> Any:
    items, fn = ev.args(arg, 2, path, scope, depth)
    if not isinstance(items, list):
        raise KvmError(f"at {path}[0]: expected a list")
    kept = []
    for item in items:
        verdict = ev.call(fn, [item], f"{path}[1]", scope, depth)
        if not isinstance(verdict, bool):
            raise KvmError(f"at {path}[1]: the function must return a bool")
        if verdict:
            kept.append(item)
    return kept


def _map(ev: Evaluator, arg: Any, path: str, scope: dict[str, Any], depth: int) -> Any:
    items, fn = ev.args(arg, 2, path, scope, depth)
    if not isinstance(items, list):
        raise KvmError(f"at {path}[0]: expected a list")
    return [ev.call(fn, [item], f"{path}[1]", scope, depth) for item in items]


def _field(ev: Evaluator, arg: Any, path: str, scope: dict[str, Any], depth: int) -> Any:
    name, value = ev.args(arg, 2, path, scope, depth)
    struct = value.value if isinstance(value, Record) else value
    if not isinstance(name, str) or not isinstance(struct, dict):
        raise KvmError(f"at {path}: expected a field name and a struct")
    if name not in struct:
        raise KvmError(f"at {path}: no field {name!r} (fields: {', '.join(sorted(struct))})")
    return struct[name]


def _compare(op: Callable[[Any, Any], bool]) -> Callable[[Evaluator, Any, str, dict[str, Any], int], Any]:
    def run(ev: Evaluator, arg: Any, path: str, scope: dict[str, Any], depth: int) -> Any:
        a, b = (plain(v) for v in ev.args(arg, 2, path, scope, depth))
        try:
            return op(a, b)
        except TypeError:
            raise KvmError(f"at {path}: cannot compare {type(a).__name__} with {type(b).__name__}") from None

    return run


def _bools(ev: Evaluator, arg: Any, path: str, scope: dict[str, Any], depth: int) -> list[bool]:
    values = [ev.eval(a, f"{path}[{i}]", scope, depth) for i, a in enumerate(_list(arg, path))]
    if not all(isinstance(v, bool) for v in values):
        raise KvmError(f"at {path}: expected bools")
    return values


def _not(ev: Evaluator, arg: Any, path: str, scope: dict[str, Any], depth: int) -> Any:
    value = ev.eval(arg, path, scope, depth)
    if not isinstance(value, bool):
        raise KvmError(f"at {path}: expected a bool")
    return not value


def _if(ev: Evaluator, arg: Any, path: str, scope: dict[str, Any], depth: int) -> Any:
    if not isinstance(arg, dict) or set(arg) - {"condition", "then", "else"} or "condition" not in arg:
        raise KvmError(f"at {path}: expected {{condition, then, else}}")
    cond = ev.eval(arg["condition"], f"{path}.condition", scope, depth)
    if not isinstance(cond, bool):
        raise KvmError(f"at {path}.condition: expected a bool")
    branch = "then" if cond else "else"
    return ev.eval(arg.get(branch), f"{path}.{branch}", scope, depth)


def _meta(ev: Evaluator, arg: Any, path: str, scope: dict[str, Any], depth: int) -> Any:
    rec = ev.eval(arg, path, scope, depth)
    if not isinstance(rec, Record):
        raise KvmError(f"at {path}: expected a record")
    created = rec.created.isoformat() if rec.created else None
    return {"id": rec.id, "model": rec.model, "created": created, "updated": created, "value": rec.value}


FUNCTIONS: dict[str, Callable[[Evaluator, Any, str, dict[str, Any], int], Any]] = {
    "all": _all,
    "tag": _model_ref,
    "model": _model_ref,
    "ref": _ref,
    "get": _get,
    "first": _first,
    "length": _length,
    "filter": _filter,
    "mapList": _map,
    "field": _field,
    "equal": _compare(lambda a, b: bool(a == b)),
    "gt": _compare(lambda a, b: bool(a > b)),
    "lt": _compare(lambda a, b: bool(a < b)),
    "and": lambda ev, arg, path, scope, depth: all(_bools(ev, arg, path, scope, depth)),
    "or": lambda ev, arg, path, scope, depth: any(_bools(ev, arg, path, scope, depth)),
    "not": _not,
    "if": _if,
    "metarialize": _meta,
}


def plain(value: Any) -> Any:
    """What a result looks like on the wire: records are their values, refs ``[model, id]``."""
    if isinstance(value, Record):
        return value.value
    if isinstance(value, Ref):
        return [value.model, value.id]
    if isinstance(value, Function):
        return {"function": [value.params, value.body]}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def evaluate(store: Store, user_id: str, admin: bool, nodes: list[dict[str, Any]], expr: Any) -> Any:
    return Evaluator(Universe(store, user_id, admin, nodes)).run(expr)
