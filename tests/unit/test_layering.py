"""The architecture is enforced: import-linter passes on the tree and fails once the control plane reaches past
the node contract; every node-contract record survives the wire; the guest protocol is typed."""

from __future__ import annotations

import ast
import dataclasses
import enum
import json
import os
import shutil
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any

import pytest

from sheesh.guest import protocol
from sheesh.node import contract
from sheesh.wire import WireError, from_wire, to_wire

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(src: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run(
        [str(LINT), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.skipif(not LINT.exists(), reason="import-linter not installed")
def test_import_contracts_hold_and_catch_a_control_plane_reaching_into_the_node(tmp_path: Path) -> None:
    assert _lint(ROOT / "src").returncode == 0
    shutil.copytree(ROOT / "src" / "sheesh", tmp_path / "sheesh", ignore=shutil.ignore_patterns("__pycache__"))
    vms = tmp_path / "sheesh" / "control" / "vms.py"
    text = vms.read_text().replace(
        "from sheesh.config import Settings", "import sheesh.node.agent\nfrom sheesh.config import Settings"
    )
    vms.write_text(text)
    out = _lint(tmp_path)
    assert out.returncode != 0
    assert "sheesh.control.vms -> sheesh.node.agent" in out.stdout, out.stdout[-2000:]


def _sample(cls: type[Any]) -> Any:
    """An instance of a wire record with every field set to something other than its default."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        values[f.name] = _value(hint, f.name)
    return cls(**values)


def _value(hint: Any, name: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return _value(next(a for a in typing.get_args(hint) if a is not type(None)), name)
    if origin is tuple:
        return (_value(typing.get_args(hint)[0], name),)
    if origin is list:
        return [_value(typing.get_args(hint)[0], name)]
    if origin is dict:
        return {"K": "v"}
    if dataclasses.is_dataclass(hint):
        return _sample(hint)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return list(hint)[-1]
    if hint is Path:
        return Path(f"/x/{name}")
    if name == "version":
        return contract.CONTRACT_VERSION
    if name in ("ip",):
        return "10.0.0.2"
    return {str: f"s-{name}", int: 7, float: 1.5, bool: True}.get(hint, {"any": [1, "two"]})


@pytest.mark.parametrize("cls", contract.CONTRACT_TYPES, ids=lambda c: c.__name__)
def test_every_contract_record_round_trips_through_json(cls: type[Any]) -> None:
    obj = _sample(cls)
    assert from_wire(cls, json.loads(json.dumps(to_wire(obj)))) == obj


def test_the_wire_refuses_unknown_versions_fields_and_types() -> None:
    spec = _sample(contract.NodeVmSpec)
    raw = to_wire(spec)
    with pytest.raises(WireError, match="version"):
        from_wire(contract.NodeVmSpec, {**raw, "version": 99})
    with pytest.raises(WireError, match="unknown fields"):
        from_wire(contract.NodeVmSpec, {**raw, "surprise": 1})
    with pytest.raises(WireError):
        from_wire(contract.NodeVmSpec, {**raw, "cpu": "1"})


def _bare_ops(tree: ast.AST, ops: set[str]) -> list[int]:
    """Lines where an op name is spelled as a string: ``x.call("exec", ...)``, ``op="exec"``, ``{"op": "exec"}``
    or ``op == "exec"``."""
    found = []
    for node in ast.walk(tree):
        literal: ast.expr | None = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "call":
            literal = node.args[0] if node.args else None
        elif isinstance(node, ast.keyword) and node.arg == "op":
            literal = node.value
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "op":
                    literal = value
        elif isinstance(node, ast.Compare) and isinstance(node.left, ast.Name) and node.left.id == "op":
            literal = node.comparators[0]
        if isinstance(literal, ast.Constant) and literal.value in ops:
            found.append(literal.lineno)
    return found


def test_no_bare_guest_op_names_outside_the_protocol() -> None:
    ops = {op.value for op in protocol.Op}
    offenders = []
    for path in (ROOT / "src" / "sheesh").rglob("*.py"):
        if path == ROOT / "src" / "sheesh" / "guest" / "protocol.py":
            continue
        offenders += [f"{path.relative_to(ROOT)}:{n}" for n in _bare_ops(ast.parse(path.read_text()), ops)]
    assert not offenders, offenders
    assert _bare_ops(ast.parse('c.call("exec", 1); d = {"op": "sync"}; f(op="ping")'), ops) == [1, 1, 1]
