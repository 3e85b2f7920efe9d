"""``edgebench run``, ``results`` and ``report``: the main job and reading its results back."""

from __future__ import annotations

import csv
import io
import json
import math
import shlex
import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from ..catalog import load_catalog
from ..errors import ConfigError
from ..lab.inventory import load_lab
from ..paths import default_db_path, default_report_path
from ..store import database_path
from .runs import GLOBAL_FLAGS, DbOpt, finish_on_exit, nothing_measured, open_store, skip_reasons

if TYPE_CHECKING:  # records pulls in scipy; the CLI starts faster without it
    from ..records import JobResult

# soft_wrap: a job's message stays on one line in CI logs, whatever the terminal width.
console = Console(stderr=True, highlight=False, soft_wrap=True)

LabOpt = Annotated[Path, typer.Option("--lab", help="Inventory YAML, e.g. devices/local.yaml.")]
RunOpt = Annotated[str, typer.Option("--run", help="'latest' or a run id (a unique prefix is enough).")]


class Format(str, Enum):
    json = "json"
    csv = "csv"
    table = "table"
    pytest_benchmark = "pytest-benchmark"


_STATUS_STYLE = {"passed": "green", "failed": "red", "error": "red bold", "skipped": "yellow"}


def _print_result(result: JobResult) -> None:
    style = _STATUS_STYLE.get(result.status, "")
    console.print(f"[{style}]{result.status.upper():7}[/] {escape(result.job_id)}  {escape(result.message)}")


def parse_kinds(text: str) -> list[str]:
    """``--kinds``'s comma-separated job kinds, checked."""
    chosen = list(dict.fromkeys(k.strip() for k in text.split(",") if k.strip()))
    unknown = sorted(set(chosen) - {"latency", "robustness"})
    if unknown:
        raise ConfigError(f"unknown job kind {unknown[0]!r}", key="--kinds", fix="use latency and/or robustness")
    if not chosen:
        raise ConfigError(f"no job kind in {text!r}", key="--kinds", fix="use latency and/or robustness")
    return chosen


def run(
    lab: LabOpt = Path("devices/local.yaml"),
    models: Annotated[str, typer.Option("--models", help="Glob over catalog model names.")] = "*",
    catalog: Annotated[Path, typer.Option("--catalog", help="Model catalog directory.")] = Path("models"),
    db: DbOpt = None,
    report: Annotated[Path | None, typer.Option("--report", help="Where to write the HTML report.")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="Shorter timed loops (still VALID P99).")] = False,
    kinds: Annotated[
        str, typer.Option("--kinds", help="Comma-separated job kinds: latency (with parity), robustness.")
    ] = "latency,robustness",
    backends: Annotated[
        str | None, typer.Option("--backends", help="Comma-separated backends (default: all the platform runs).")
    ] = None,
    all_sizes: Annotated[
        bool, typer.Option("--all-sizes", help="Also every extra input size in the catalog (input_sizes).")
    ] = False,
    min_duration: Annotated[
        float | None, typer.Option("--min-duration", min=0, help="Seconds each timed loop runs at least.")
    ] = None,
    max_duration: Annotated[
        float | None, typer.Option("--max-duration", min=0.001, help="Time cap of each timed loop, seconds.")
    ] = None,
    half_width: Annotated[
        float | None,
        typer.Option(
            "--half-width",
            min=0.0001,
            max=0.9999,
            help="Target interval half-width of the --stop-on percentiles (default P50/P95/P99), e.g. 0.02.",
        ),
    ] = None,
    batch: Annotated[int | None, typer.Option("--batch", min=1, help="Rows of the latency input per call.")] = None,
    repeats: Annotated[
        int | None,
        typer.Option(
            "--repeats",
            min=1,
            help="Runner processes per latency job (3 or more: percentiles get a between-run interval).",
        ),
    ] = None,
    stop_on: Annotated[
        str | None,
        typer.Option("--stop-on", help="Percentiles the stop rule pins down, e.g. p99 (default p50,p95,p99)."),
    ] = None,
) -> int:
    """Build, deploy and measure every model variant on every device of a lab; store; report."""
    from ..pipeline import Pipeline, backends_flag, empty_plan, measure_settings, stop_on_flag
    from ..report.render import check_report_target, write_report

    # Every input is checked before the database is opened or a run recorded.
    lab_config = load_lab(lab)
    entries = load_catalog(catalog, models)
    settings = measure_settings(
        lab_config,
        quick=quick,
        min_duration_s=min_duration,
        max_duration_s=max_duration,
        max_half_width=half_width,
        batch=batch,
        repeats=repeats,
        stop_on=stop_on_flag(stop_on),
    )
    chosen = parse_kinds(kinds)
    chosen_backends = backends_flag(backends)
    target = db if db is not None else default_db_path()
    out = check_report_target(report or default_report_path(), database_path(target), flag="--report")
    pipeline = Pipeline(
        lab_config,
        entries,
        open_store=lambda: open_store(db),
        catalog=load_catalog(catalog),
        backends=chosen_backends,
        native_size_only=not all_sizes,
        settings=settings,
        command="edgebench " + shlex.join(sys.argv[1:]),
        on_result=_print_result,
    )

    jobs = pipeline.plan(chosen)
    if not jobs:
        raise empty_plan(pipeline, chosen)
    store = pipeline.results_store()

    def work() -> None:
        console.print(f"run {pipeline.run_id}: {len(jobs)} job(s) on {len(lab_config.devices)} device(s)")
        for job in jobs:
            # result_for, not run_job: a candidate's job runs its production model's job first (same
            # variant, same device), and a job already run is not timed and stored a second time.
            pipeline.result_for(job)

    status = finish_on_exit(pipeline, work)
    out = write_report(store, pipeline.run_id, out, flag="--report")
    print(f"report: {out.resolve()}")
    print(f"database: {store.location}")
    print(f"run: {pipeline.run_id} ({status})")
    if status == "skipped":
        raise nothing_measured(skip_reasons(pipeline.results))
    return {"passed": 0, "failed": 1}.get(status, 2)


def _json_safe(value: Any) -> Any:
    """JSON has no infinity: a PSNR of identical outputs is written as the string "inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


def results(
    db: DbOpt = None,
    run_: Annotated[str, typer.Option("--run", help="'latest' or a run id (a unique prefix is enough).")] = "latest",
    format_: Annotated[
        Format, typer.Option("--format", help="json, csv, table, or pytest-benchmark (JSON its compare tool reads).")
    ] = Format.table,
    runs: Annotated[bool, typer.Option("--runs", help="List runs instead of results.")] = False,
) -> int:
    """Print a run's results (or the list of runs)."""
    if runs and format_ is Format.pytest_benchmark:
        raise ConfigError(
            "the pytest-benchmark format exports one run's results, not the list of runs",
            key="--runs",
            fix="list runs with --format json, csv or table, or drop --runs",
        )
    if runs and run_ != "latest":
        raise ConfigError(
            f"--runs lists every run, so --run {run_!r} has nothing to choose",
            key="--runs",
            fix="drop --run to list runs, or drop --runs to show that run's results",
        )
    store = open_store(db, read_only=True)
    if format_ is Format.pytest_benchmark:
        from ..report.pytest_benchmark import export_run

        print(json.dumps(_json_safe(export_run(store, store.resolve_run(run_))), indent=2, default=str))
        return 0
    rows = store.list_runs() if runs else store.results(store.resolve_run(run_))
    if format_ is Format.json:
        print(json.dumps(_json_safe(rows), indent=2, default=str))
    elif format_ is Format.csv:
        print(_csv(rows), end="")
    else:
        _table(rows, runs)
    return 0


def _csv(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in row.items()})
    return buffer.getvalue()


def _table(rows: list[dict[str, Any]], runs: bool) -> None:
    from rich.table import Table

    out = Console(highlight=False)
    if runs:
        table = Table()
        # Ids are what a user copies into --run: folded onto a second line, never cut.
        table.add_column("run", overflow="fold", min_width=12)
        for column in ("started", "status", "lab", "git"):
            table.add_column(column, overflow="fold")
        for r in rows:
            table.add_row(r["id"], r["started_at"], r["status"], r["lab_name"] or "", (r["git_sha"] or "")[:10])
        out.print(table)
        return
    table = Table()
    table.add_column("job", overflow="fold")  # a job id names model/variant/device: folded, never cut
    for column in ("kind", "n", "P50 ms", "P95 ms", "P99 ms", "valid", "status"):
        table.add_column(column, overflow="fold")
    for r in rows:
        table.add_row(
            r["job_id"],
            r.get("kind", "latency"),
            str(r["n"]),
            _ms(r.get("p50_ms")),
            _ms(r.get("p95_ms")),
            _ms(r.get("p99_ms")),
            "VALID" if r["valid"] else "INVALID",
            r["status"],
        )
    out.print(table)


def _ms(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


def report(
    db: DbOpt = None,
    run_: RunOpt = "latest",
    out: Annotated[Path | None, typer.Option("--out", help="Where to write the HTML file.")] = None,
) -> int:
    """Render one self-contained HTML report of a run."""
    from ..report.render import check_report_target, write_report

    target = db if db is not None else default_db_path()
    path = check_report_target(out or default_report_path(), database_path(target), flag="--out")
    store = open_store(db, read_only=True)
    path = write_report(store, store.resolve_run(run_), path)
    print(f"report: {path.resolve()}")
    return 0


def register(app: typer.Typer) -> None:
    app.command("run", epilog=GLOBAL_FLAGS)(run)
    app.command("results", epilog=GLOBAL_FLAGS)(results)
    app.command("report", epilog=GLOBAL_FLAGS)(report)
