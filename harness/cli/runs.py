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


def empty_plan(
    pipeline: Pipeline,
    kinds: Sequence[str],
    *,
    backends_flag: str = "--backends",
) -> ConfigError:
    """Why the plan has no job, naming the filter that emptied it (``backends_flag``: how the command spells it)."""
    from ..pipeline import has_labels
    from ..plan import plan_variants

    lab = pipeline.lab
    where = f"lab {lab.name!r}" + (f" ({lab.lab_file})" if lab.lab_file else "")
    if "latency" not in kinds and not any(has_labels(m) for m in pipeline.models):
        names = ", ".join(m.name for m in pipeline.models)
        return ConfigError(
            f"robustness needs a labelled eval set and no chosen model has one ({names})",
            key="--kinds",
            fix="add latency to --kinds, or choose a model with labels (--models)",
        )
    unfiltered = {
        v.backend
        for m in pipeline.models
        for d in lab.devices
        for v in plan_variants(m, d, pipeline.profile(d), backends=None)
    }
    if pipeline.backends is not None and not unfiltered & pipeline.backends:
        asked = ", ".join(sorted(pipeline.backends))
        runs = ", ".join(sorted(unfiltered)) or "none"
        return ConfigError(
            f"no device of {where} runs {asked}, so no job was planned",
            key=backends_flag,
            fix=f"use backends its devices run: {runs}",
        )
    if not unfiltered:
        return ConfigError(
            f"no device of {where} runs any backend of its platform, so no job was planned",
            key="runtimes",
            fix="check each device's platform: and runtimes: in the lab file (edgebench devices check --lab FILE)",
        )
    # Every model plans its catalog shape and every device here runs a backend: nothing else empties a plan.
    return ConfigError(f"no job was planned on {where}", key="--models", fix="check --models and the lab's devices")


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
