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
from ..errors import CapabilityMissing, DeviceOffline, EdgebenchError, ToolchainMissing
from ..lab.inventory import load_lab
from .runs import GLOBAL_FLAGS, DbOpt, check_measured, finish_on_exit, open_store

console = Console(highlight=False, soft_wrap=True)


def interleave(
    lab: Annotated[Path, typer.Option("--lab", help="Inventory YAML, e.g. devices/local.yaml.")] = Path(
        "devices/local.yaml"
    ),
    models: Annotated[str, typer.Option("--models", help="Glob over catalog model names.")] = "*",
    catalog: Annotated[Path, typer.Option("--catalog", help="Model catalog directory.")] = Path("models"),
    db: DbOpt = None,
    backends: Annotated[
        str | None, typer.Option("--backends", help="Comma-separated backends (default: all the platform runs).")
    ] = None,
    block: Annotated[int, typer.Option("--block", min=1, help="Iterations of each variant per round.")] = 25,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of the round order (default: random).")] = None,
) -> int:
    """Run every variant of a model on a device in one process, shuffled round by round, with an A/A check."""
    from ..pipeline import Pipeline, backends_flag, empty_plan, measure_settings
    from ..scenarios import buildable, interleave_groups, run_interleaved

    lab_config = load_lab(lab)
    entries = load_catalog(catalog, models)
    settings = measure_settings(lab_config)
    chosen_backends = backends_flag(backends)
    pipeline = Pipeline(
        lab_config,
        entries,
        open_store=lambda: open_store(db),
        settings=settings,
        backends=chosen_backends,
        native_size_only=True,
        command="edgebench " + shlex.join(sys.argv[1:]),
    )
    table = Table("model", "device", "variant", "P50 ms", "P99 ms", "mode", "A/A ratio", "status")
    skipped: list[str] = []
    errors: list[str] = []

    planned = pipeline.plan(["latency"])
    if not planned:
        raise empty_plan(pipeline, ["latency"])
    pipeline.results_store()  # a wrong --db is refused now, before any device work

    def work() -> str | None:
        measured = 0
        for group in interleave_groups(planned):
            jobs, unbuilt = buildable(pipeline, group.jobs)  # a variant this host cannot build is shown skipped
            for job in group.jobs:
                if job.id in unbuilt:
                    table.add_row(
                        group.model, group.device, job.variant.id, "-", "-", "-", "-", f"skipped: {unbuilt[job.id]}"
                    )
            if not jobs:
                skipped.extend(f"{job_id}: {why}" for job_id, why in unbuilt.items())
                continue
            try:
                outcome = run_interleaved(pipeline, jobs, block=block, seed=seed)
            except (CapabilityMissing, ToolchainMissing, DeviceOffline) as exc:
                # A device that cannot be reached is skipped, as in `edgebench run`: the lab carries on.
                skipped.append(f"{group.id}: {exc.one_line()}")
                table.add_row(group.model, group.device, "-", "-", "-", "-", "-", f"skipped: {exc.one_line()}")
                continue
            except EdgebenchError as exc:
                errors.append(exc.one_line())
                pipeline.note_broken(jobs[0].device, exc)  # its later groups skip with the reason
                table.add_row(group.model, group.device, "-", "-", "-", "-", "-", f"error: {exc.one_line()}")
                continue
            measured += 1
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
        # Errors are not results the store holds: the run's status says so.
        return "error" if errors else "skipped" if not measured else None

    status = finish_on_exit(pipeline, work)
    console.print(table)
    if pipeline.started:
        print(f"run: {pipeline.run_id} ({status})")
    check_measured(status, skipped, errors, what="variant", failed="the interleaved comparison")
    return 0


def register(app: typer.Typer) -> None:
    app.command("interleave", epilog=GLOBAL_FLAGS)(interleave)
