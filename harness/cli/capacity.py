"""``edgebench capacity``: how many concurrent camera streams at F frames per second each device serves."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ..build.backends import get_backend
from ..catalog import load_catalog
from ..errors import CapabilityMissing, ConfigError, DeviceOffline, EdgebenchError, ToolchainMissing
from ..lab.inventory import load_lab
from .runs import GLOBAL_FLAGS, DbOpt, check_measured, finish_on_exit, open_store

console = Console(highlight=False, soft_wrap=True)


def parse_fps(text: str) -> tuple[float, ...]:
    """``"30,60"`` -> (30.0, 60.0); a bad entry is a ConfigError that quotes it."""
    rates: list[float] = []
    for part in (p.strip() for p in text.split(",")):
        try:
            value = float(part)
        except ValueError:
            value = float("nan")
        if not value > 0 or value == float("inf"):
            raise ConfigError(f"frame rate {part!r} is not a positive number", key="--fps", fix="e.g. --fps 30,60")
        rates.append(value)
    return tuple(dict.fromkeys(rates))


def capacity(
    lab: Annotated[Path, typer.Option("--lab", help="Inventory YAML, e.g. devices/local.yaml.")] = Path(
        "devices/local.yaml"
    ),
    models: Annotated[str, typer.Option("--models", help="Glob over catalog model names.")] = "*",
    fps: Annotated[str, typer.Option("--fps", help="Comma-separated frames per second per stream.")] = "30,60",
    catalog: Annotated[Path, typer.Option("--catalog", help="Model catalog directory.")] = Path("models"),
    db: DbOpt = None,
    backend: Annotated[str, typer.Option("--backend", help="Backend that compiles and runs it.")] = "onnxruntime",
    precision: Annotated[str, typer.Option("--precision", help="Precision of the compiled model.")] = "fp32",
    threads: Annotated[
        int, typer.Option("--threads", min=1, help="Runtime threads per stream (1: streams run side by side).")
    ] = 1,
    max_streams: Annotated[int, typer.Option("--max-streams", min=1, help="Upper end of the search.")] = 64,
) -> int:
    """Raise concurrent streams until P99 exceeds the frame interval (1000/F ms); report streams per device."""
    from ..pipeline import Pipeline, backends_flag, empty_plan, measure_settings
    from ..records import Job, Variant
    from ..scenarios import fps_key, run_capacity

    rates = parse_fps(fps)
    # An unknown backend or precision is an error listing the known ones, before any run is recorded.
    backends_flag(backend, flag="--backend")
    known = get_backend(backend).precisions
    if precision not in known:
        raise ConfigError(
            f"{backend} has no precision {precision!r}", key="--precision", fix=f"use one of: {', '.join(known)}"
        )
    lab_config = load_lab(lab)
    entries = load_catalog(catalog, models)
    settings = measure_settings(lab_config)
    command = "edgebench " + shlex.join(sys.argv[1:])
    pipeline = Pipeline(
        lab_config,
        entries,
        open_store=lambda: open_store(db),
        settings=settings,
        command=command,
        backends={backend},
    )
    # Like run and interleave: a lab none of whose devices runs the backend is an error before any
    # database is opened or created.
    if not pipeline.plan(["latency"]):
        raise empty_plan(pipeline, ["latency"], backends_flag="--backend")
    pipeline.results_store()  # a wrong --db is refused now, before any device work
    table = Table("model", "device", *(f"streams @ {r:g} FPS" for r in rates), "status")
    skipped: list[str] = []
    errors: list[str] = []

    def work() -> str | None:
        measured = 0
        for entry in entries:
            for device in lab_config.devices:
                variant = Variant(backend, precision, threads=threads, options=device.backend_options(backend))
                job = Job(entry, variant, device, "capacity")
                try:
                    result, answers = run_capacity(pipeline, job, fps=rates, max_streams=max_streams)
                except (CapabilityMissing, ToolchainMissing, DeviceOffline) as exc:
                    # A device that cannot be reached is skipped, as in `edgebench run`: the lab carries on.
                    skipped.append(f"{job.id}: {exc.one_line()}")
                    table.add_row(entry.name, device.name, *("-" for _ in rates), f"skipped: {exc.one_line()}")
                    continue
                except EdgebenchError as exc:
                    errors.append(exc.one_line())
                    pipeline.note_broken(job.device, exc)  # its later models skip with the reason
                    table.add_row(entry.name, device.name, *("-" for _ in rates), f"error: {exc.one_line()}")
                    continue
                measured += 1
                cells = []
                for a in answers:
                    cells.append(f"{'>=' if a.capped else ''}{result.metrics[fps_key(a.fps)]}")
                table.add_row(entry.name, device.name, *cells, "ok")
        # Errors are not results the store holds: the run's status says so.
        return "error" if errors else "skipped" if not measured else None

    status = finish_on_exit(pipeline, work)
    console.print(table)
    if pipeline.started:
        print(
            f"run: {pipeline.run_id} ({status}); per-step P99: edgebench results --run {pipeline.run_id} --format json"
        )
    check_measured(status, skipped, errors, what="capacity job", failed="the capacity search")
    return 0


def register(app: typer.Typer) -> None:
    app.command("capacity", epilog=GLOBAL_FLAGS)(capacity)
