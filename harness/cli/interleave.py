"""``edgebench interleave``: compare a model's variants on each device in randomised interleaved rounds."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ..catalog import load_catalog
from ..errors import CapabilityMissing, EdgebenchError, ToolchainMissing
from ..lab.inventory import load_lab
from ..paths import default_db_path

console = Console(highlight=False, soft_wrap=True)


def interleave(
    lab: Annotated[Path, typer.Option("--lab", help="Inventory YAML, e.g. devices/local.yaml.")] = Path(
        "devices/local.yaml"
    ),
    models: Annotated[str, typer.Option("--models", help="Glob over catalog model names.")] = "*",
    catalog: Annotated[Path, typer.Option("--catalog", help="Model catalog directory.")] = Path("models"),
    db: Annotated[Path | None, typer.Option("--db", help="Results database: SQLite path or postgresql:// URL.")] = None,
    backends: Annotated[
        str | None, typer.Option("--backends", help="Comma-separated backends (default: all the platform runs).")
    ] = None,
    block: Annotated[int, typer.Option("--block", min=1, help="Iterations of each variant per round.")] = 25,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of the round order (default: random).")] = None,
) -> int:
    """Run every variant of a model on a device in one process, shuffled round by round, with an A/A check."""
    from ..pipeline import Pipeline, measure_settings
    from ..scenarios import buildable, interleave_groups, run_interleaved
    from ..store import Store

    lab_config = load_lab(lab)
    entries = load_catalog(catalog, models)
    store = Store(str(db) if db is not None else default_db_path())
    pipeline = Pipeline(
        lab_config,
        entries,
        store,
        settings=measure_settings(lab_config),
        backends={b.strip() for b in backends.split(",") if b.strip()} if backends else None,
        native_size_only=True,
        command="edgebench " + shlex.join(sys.argv[1:]),
    )
    table = Table("model", "device", "variant", "P50 ms", "P99 ms", "mode", "A/A ratio", "status")
    failed = False
    try:
        for group in interleave_groups(pipeline.plan(["latency"])):
            jobs, unbuilt = buildable(pipeline, group.jobs)  # a variant this host cannot build is shown skipped
            for job in group.jobs:
                if job.id in unbuilt:
                    table.add_row(
                        group.model, group.device, job.variant.id, "-", "-", "-", "-", f"skipped: {unbuilt[job.id]}"
                    )
            if not jobs:
                continue
            try:
                outcome = run_interleaved(pipeline, jobs, block=block, seed=seed)
            except (CapabilityMissing, ToolchainMissing) as exc:
                table.add_row(group.model, group.device, "-", "-", "-", "-", "-", f"skipped: {exc.one_line()}")
                continue
            except EdgebenchError as exc:
                failed = True
                table.add_row(group.model, group.device, "-", "-", "-", "-", "-", f"error: {exc.one_line()}")
                continue
            ratio = f"{outcome.aa['ratio']:.4f}" if outcome.aa else "-"
            for r in outcome.results:
                lat = r.latency
                table.add_row(
                    group.model,
                    group.device,
                    r.job_id.split("/")[1],
                    f"{lat.p50.value_ms:.3f}" if lat else "-",
                    f"{lat.p99.value_ms:.3f}" if lat else "-",
                    outcome.mode,
                    ratio,
                    r.status,
                )
    finally:
        status = pipeline.finish()
    console.print(table)
    print(f"run: {pipeline.run_id} ({status})")
    return 2 if failed else 0


def register(app: typer.Typer) -> None:
    app.command("interleave")(interleave)
