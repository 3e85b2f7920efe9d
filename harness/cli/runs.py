"""What the commands that make or read a run share: the --db option, marking a run on every exit, and
refusing a run that measured nothing.

A run is recorded at its first job (``Pipeline.start``), so a command that fails on its input before
then leaves no run behind; once started, it is marked ``interrupted`` on Ctrl-C and ``error`` on any
other exception, never left ``running``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Annotated

import typer

from ..errors import ConfigError, EdgebenchError
from ..paths import default_db_path
from ..store import Store

if TYPE_CHECKING:  # the pipeline pulls in scipy and the build code; help and read commands start faster
    from ..pipeline import Pipeline
    from ..records import JobResult

# str, not Path: a Path collapses the '//' of postgresql://host/db into a file name.
DbOpt = Annotated[
    str | None,
    typer.Option("--db", help="Results database: a SQLite path or a URL such as postgresql://user@host/db."),
]

GLOBAL_FLAGS = "Anywhere on the line: --debug shows tracebacks, --verbose (-v) logs each step."


def open_store(db: str | None, *, read_only: bool = False) -> Store:
    """The store ``--db`` names (default: the user's results database); readers never create one."""
    return Store(db if db is not None else default_db_path(), read_only=read_only)


def finish_on_exit(pipeline: Pipeline, work: Callable[[], str | None]) -> str:
    """Run ``work`` (it returns an outcome for ``Pipeline.finish``, or None) and mark the run however it ends."""
    try:
        outcome = work()
    except KeyboardInterrupt:
        pipeline.finish("interrupted")
        raise
    except BaseException:
        pipeline.finish("error")
        raise
    return pipeline.finish(outcome)


def nothing_measured(skipped: Sequence[str], what: str = "job") -> ConfigError:
    """Every job (or group) was skipped: an error naming the first reason, not a pass."""
    first = skipped[0] if skipped else "no reason recorded"
    fix = None if "fix:" in first else "check the lab: edgebench devices check --lab FILE"
    return ConfigError(f"all {len(skipped)} {what}(s) were skipped, nothing was measured; the first: {first}", fix=fix)


def check_measured(status: str, skipped: Sequence[str], errors: Sequence[str], *, what: str, failed: str) -> None:
    """The end of a command that measures groups: all skipped is an error, and so is any failed group.

    ``what`` names a skipped unit ("variant"); ``failed`` says what failed ("the capacity search").
    """
    if status == "skipped":
        raise nothing_measured(skipped, what)
    if errors:
        # The first error's own fix, when it has one, is the most precise advice there is.
        fix = (
            None
            if "fix:" in errors[0]
            else "read each model x device's error in the table above, and check the devices: "
            "edgebench devices check --lab FILE"
        )
        raise EdgebenchError(f"{failed} failed for {len(errors)} model x device(s); the first: {errors[0]}", fix=fix)


def skip_reasons(results: Sequence[JobResult]) -> list[str]:
    return [f"{r.job_id}: {r.message}" for r in results if r.status == "skipped"]
