"""``edgebench lab up|down`` (a loopback lab of real OpenSSH servers) and ``edgebench devices check``.

``devices check`` exits 0 once every device was checked, whatever their states: the table and the
store say which are healthy, and jobs on offline devices skip with the reason. With ``--strict`` it
exits 1 unless every device is healthy, for a CI step that should stop on a broken lab. A file the lab
names on this host (an ``identity:`` key, an ``ssh_config:``) that does not exist is the lab's own
error, not a device's state: exit 2 before any device is contacted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..errors import ConfigError
from ..lab.health import HealthRecord, check_lab
from ..lab.inventory import Lab, load_lab
from ..lab.loopback import lab_down, lab_up, load_state
from .runs import GLOBAL_FLAGS, DbOpt, open_store

console = Console(highlight=False, soft_wrap=True)

# rich_markup_mode=None: plain help, where a flag shows no '<bool>' value (as in the main app).
lab_app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
devices_app = typer.Typer(
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None
)


@devices_app.callback()
def devices() -> None:
    """Check the health of a lab's devices."""  # a group, so 'devices check' keeps its name


LabFile = Annotated[Path, typer.Option("--lab", help="Inventory YAML, e.g. devices/lab.yaml.")]
_STATE_STYLE = {"healthy": "green", "degraded": "yellow", "offline": "red bold"}


@lab_app.command("up", epilog=GLOBAL_FLAGS)
def up(
    out: Annotated[Path, typer.Option("--out", help="Where to write the lab's inventory YAML.")],
    devices: Annotated[int, typer.Option("--devices", "-n", min=1, max=64, help="How many servers.")] = 3,
    force: Annotated[
        bool, typer.Option("--force", help="Replace --out even if 'edgebench lab up' did not write it.")
    ] = False,
) -> None:
    """Start N OpenSSH servers on 127.0.0.1 and write an inventory for them (keys and state beside it)."""
    path = lab_up(devices, out, force=force)
    state = load_state(path)
    for server in state.servers:
        console.print(f"{server.name}: sshd on 127.0.0.1:{server.port} (pid {server.pid()})")
    console.print(f"wrote {path}")
    console.print(f"next: edgebench devices check --lab {path}")
    console.print(f"stop: edgebench lab down --lab {path}")


@lab_app.command("down", epilog=GLOBAL_FLAGS)
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


def missing_local_files(lab: Lab) -> ConfigError | None:
    """The first file a device names on this host (identity, ssh_config) that does not exist."""
    for index, device in enumerate(lab.devices):
        if device.transport != "ssh":
            continue
        for key, value in (("identity", device.identity), ("ssh_config", device.ssh_config)):
            if value and not Path(value).expanduser().is_file():
                return ConfigError(
                    f"{key} file {value} of device {device.name!r} does not exist",
                    file=lab.lab_file,
                    key=f"devices[{index}].{key}",
                    fix=f"correct {key}: or create the file",
                )
    return None


@devices_app.command("check", epilog=GLOBAL_FLAGS)
def check(
    lab: LabFile,
    db: DbOpt = None,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 unless every device is healthy.")] = False,
) -> None:
    """Check every device: reachable, authenticated, Python, numpy, runtimes, free disk, temperature."""
    lab_config = load_lab(lab)
    missing = missing_local_files(lab_config)
    if missing is not None:
        raise missing
    store = open_store(db)
    try:
        records = check_lab(lab_config, store)
    finally:
        store.close()
    console.print(health_table(records))
    counts = {state: sum(r.state == state for r in records) for state in _STATE_STYLE}
    console.print(", ".join(f"{n} {state}" for state, n in counts.items()))
    if strict and counts["healthy"] != len(records):
        raise typer.Exit(1)
