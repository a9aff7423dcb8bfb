"""What the API commands of the CLI share: the SDK client (``SHEESH_URL``/``SHEESH_API_KEY``, then the saved
login), output as a rich table or ``--json``, and SDK errors as a red line and exit status 1."""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from sheesh.client import Sheesh
from sheesh.client.errors import SheeshClientError

out = Console()
err = Console(stderr=True)
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output")]


@contextlib.contextmanager
def api() -> Iterator[Sheesh]:
    """The SDK client of the configured server; an SDK error ends the command (red message, exit 1)."""
    try:
        with Sheesh() as client:
            yield client
    except SheeshClientError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc


def plain(value: Any) -> Any:
    """A record (dataclass, list, datetime, enum) as JSON-friendly data."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    return value


def show(records: Any, columns: Sequence[str], as_json: bool, *, title: str | None = None) -> None:
    """``records`` (one or a list) as JSON, or as a table of ``columns`` (field names)."""
    if as_json:
        print(json.dumps(plain(records), indent=2))
        return
    rows = records if isinstance(records, list) else [records]
    table = Table(title=title, header_style="bold")
    for name in columns:
        table.add_column(name.replace("_", " "))
    for record in rows:
        data = plain(record)
        table.add_row(*("" if data.get(c) is None else _cell(data.get(c)) for c in columns))
    out.print(table)


def _cell(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value)
    if isinstance(value, str) and len(value) > 19 and value[4:5] == "-" and value[10:11] == "T":
        return value[:19].replace("T", " ")  # a time: to the second
    return str(value)
