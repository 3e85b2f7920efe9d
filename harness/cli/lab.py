"""``edgebench lab up|down`` (a loopback lab of real OpenSSH servers) and ``edgebench devices check``.

``devices check`` exits 0 once every device was checked, whatever their states: the table and the
store say which are healthy, and jobs on offline devices skip with the reason. With ``--strict`` it
exits 1 unless every device is healthy, for a CI step that should stop on a broken lab.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..lab.health import HealthRecord, check_lab
from ..lab.inventory import load_lab
from ..lab.loopback import lab_down, lab_up, load_state
from ..paths import default_db_path
from ..store import Store

console = Console(highlight=False, soft_wrap=True)

lab_app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
devices_app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


@devices_app.callback()
def devices() -> None:
    """Check the health of a lab's devices."""  # a group, so 'devices check' keeps its name


LabFile = Annotated[Path, typer.Option("--lab", help="Inventory YAML, e.g. devices/lab.yaml.")]
_STATE_STYLE = {"healthy": "green", "degraded": "yellow", "offline": "red bold"}


@lab_app.command("up")
def up(
    out: Annotated[Path, typer.Option("--out", help="Where to write the lab's inventory YAML.")],
    devices: Annotated[int, typer.Option("--devices", "-n", min=1, max=64, help="How many servers.")] = 3,
) -> None:
    """Start N OpenSSH servers on 127.0.0.1 and write an inventory for them (keys and state beside it)."""
    path = lab_up(devices, out)
    state = load_state(path)
    for server in state.servers:
        console.print(f"{server.name}: sshd on 127.0.0.1:{server.port} (pid {server.pid()})")
    console.print(f"wrote {path}")
    console.print(f"next: edgebench devices check --lab {path}")
    console.print(f"stop: edgebench lab down --lab {path}")


@lab_app.command("down")
def down(lab: LabFile) -> None:
    """Stop the servers 'edgebench lab up' started for this inventory."""
    stopped = lab_down(lab)
    if stopped:
        console.print(f"stopped {len(stopped)} server(s): {', '.join(stopped)}")
    else:
        console.print("no server of this lab was running")


def health_table(records: list[HealthRecord]) -> Table:
    table = Table(title="device health", title_justify="left")
    for column in ("device", "platform", "state", "python", "numpy", "runtimes", "free disk", "max temp", "reason"):
        table.add_column(column, overflow="fold")
    for r in records:
        temp = r.max_temperature_c
        table.add_row(
            escape(r.device),
            r.platform,
            f"[{_STATE_STYLE[r.state]}]{r.state}[/]",
            r.python or "-",
            r.numpy or "-",
            escape(", ".join(r.available_runtimes) or "-"),
            f"{r.free_disk_mb / 1024:.1f} GB" if r.free_disk_mb is not None else "-",
            f"{temp:.0f} °C" if temp is not None else "-",
            escape(r.reason),
        )
    return table


@devices_app.command("check")
def check(
    lab: LabFile,
    db: Annotated[Path | None, typer.Option("--db", help="Results database (SQLite path or URL).")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 unless every device is healthy.")] = False,
) -> None:
    """Check every device: reachable, authenticated, Python, numpy, runtimes, free disk, temperature."""
    lab_config = load_lab(lab)
    store = Store(str(db) if db is not None else default_db_path())
    try:
        records = check_lab(lab_config, store)
    finally:
        store.close()
    console.print(health_table(records))
    counts = {state: sum(r.state == state for r in records) for state in _STATE_STYLE}
    console.print(", ".join(f"{n} {state}" for state, n in counts.items()))
    if strict and counts["healthy"] != len(records):
        raise typer.Exit(1)
