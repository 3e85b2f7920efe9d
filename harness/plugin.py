"""pytest wiring: options, one test per (model x variant x device), JUnit properties, the report at the end.

Public pytest API only: ``parser.getgroup``, ``pytest.StashKey``, registered markers,
``record_property`` / ``record_testsuite_property``. Nothing happens unless ``--lab`` is given (but a
test asking for an edgebench fixture with a misspelled ``edgebench_kind`` is refused), so installing
edgebench does not change anyone else's test runs; with ``--lab``, pytest-xdist is refused
(every worker would time its own jobs on the same devices at once). The interleaved suite makes one
test per (model x device) group instead, and runs only with ``--interleave``: it spends device time
again on variants the latency suite has measured already.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

from .errors import CapabilityMissing, DeviceOffline, EdgebenchError, ToolchainMissing
from .records import Job, JobResult

if TYPE_CHECKING:
    from .scenarios import InterleaveGroup, InterleaveOutcome

_PIPELINE = pytest.StashKey["Any"]()
_REPORT = pytest.StashKey["Path | None"]()
_REPORT_ERROR = pytest.StashKey[str]()
_ALL_SKIPPED = pytest.StashKey[str]()  # the first skip reason, when every job of the run was skipped
# Jobs and groups skipped here, before the pipeline saw them (requires(...), a group nothing of which
# could run): they count for the all-skipped check, though no run records them.
_SKIPPED_EARLY = pytest.StashKey["list[str]"]()
# One interleaved comparison per group and session, however many tests ask for it.
_INTERLEAVED = pytest.StashKey["dict[str, _Interleaved]"]()
# Tests whose edgebench_kind marker names no known kind, by node id: refused once collection is done.
_BAD_KINDS = pytest.StashKey["dict[str, str]"]()

NO_LAB = "edgebench suites need --lab FILE"
# The values edgebench_kind takes: a misspelled one would otherwise run the latency job unseen.
SUITE_KINDS = ("latency", "parity", "robustness", "interleaved")
NO_INTERLEAVE = "pass --interleave to run the interleaved comparison (it spends device time on every variant again)"
UNDER_XDIST = (
    "edgebench: --lab cannot run under pytest-xdist (-n): jobs on one device must not be timed at the same "
    "time; fix: drop -n for the suites"
)

# Metrics published as JUnit properties for every job (the nightly CI's dashboards read these).
JUNIT_KEYS = (
    "model",
    "backend",
    "precision",
    "device",
    "n",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "p50_ci_ms",
    "p95_ci_ms",
    "p99_ci_ms",
    "p99_effective_n",
    "mean_ms",
    "first_inference_ms",
    "valid",
    "status",
    "stop_reason",
    "repeats",
    # Whether to trust the numbers: a green job can still be unstable (the reasons say why).
    "unstable",
    "unstable_reasons",
    "throttled",
    "cpu_parallelism",
    "history_p50_ratio",  # against the same artifact's last runs on the device
    # Accuracy parity against the FP32 model, and robustness (their suites read these).
    "top1_acc",
    "top1_drop_pp",
    "top1_agreement",
    "psnr_db",
    "mce",
    "rel_mce",
    "worst_corruption",
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("edgebench", "edgebench device-lab benchmarking")
    group.addoption("--lab", metavar="FILE", help="inventory YAML of the device lab (e.g. devices/local.yaml)")
    group.addoption("--models", metavar="GLOB", default="*", help="glob over catalog model names (default: *)")
    group.addoption("--catalog", metavar="DIR", default="models", help="model catalog directory (default: models)")
    group.addoption("--db", metavar="PATH", help="results database: SQLite path or postgresql:// URL")
    group.addoption("--report", metavar="PATH", help="write the HTML report here at the end of the session")
    group.addoption("--quick", action="store_true", help="shorter timed loops (P99 still VALID)")
    group.addoption("--backends", metavar="LIST", help="comma-separated backends (default: all the platform runs)")
    group.addoption(
        "--all-sizes", action="store_true", help="also every extra input size in the catalog (input_sizes)"
    )
    group.addoption("--min-duration", metavar="S", type=float, help="seconds each timed loop runs at least")
    group.addoption("--max-duration", metavar="S", type=float, help="time cap of each timed loop, seconds")
    group.addoption(
        "--half-width",
        metavar="F",
        type=float,
        help="target interval half-width of the --stop-on percentiles (default P50/P95/P99), e.g. 0.02",
    )
    group.addoption("--batch", metavar="N", type=int, help="rows of the latency input per timed call")
    group.addoption(
        "--repeats",
        metavar="K",
        type=int,
        help="runner processes per latency job (3 or more: percentiles get a between-run interval)",
    )
    group.addoption(
        "--stop-on", metavar="LIST", help="percentiles the stop rule pins down, e.g. p99 (default p50,p95,p99)"
    )
    group.addoption(
        "--interleave",
        action="store_true",
        help="run the interleaved suite: each model's variants on a device in one process, with an A/A self-check",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "edgebench_kind(name): which job kind a suite runs: latency, parity, robustness, or interleaved "
        "(every latency variant of a model on a device in shuffled rounds in one process; needs --interleave)",
    )
    config.addinivalue_line(
        "markers", "requires(capability): skip jobs on devices without it (a runtime, a precision or a tag)"
    )
    lab_file = config.getoption("--lab")
    if lab_file is None:
        return
    if not lab_file.strip():
        raise pytest.UsageError(
            "edgebench: --lab: the value is empty; fix: pass an inventory file, e.g. --lab devices/local.yaml"
        )
    if _distributed(config):
        # Each xdist worker would build its own pipeline: two runs, one device timing two jobs at once,
        # both writing the same report.
        raise pytest.UsageError(UNDER_XDIST)
    from .catalog import load_catalog
    from .lab.inventory import load_lab
    from .paths import default_db_path, default_report_path
    from .pipeline import Pipeline, backends_flag, empty_plan, measure_settings, stop_on_flag
    from .report.render import check_report_target
    from .store import Store, check_new_database, database_path

    try:
        lab = load_lab(Path(lab_file))
        models = load_catalog(Path(config.getoption("--catalog")), config.getoption("--models"))
        settings = measure_settings(
            lab,
            quick=config.getoption("--quick"),
            min_duration_s=config.getoption("--min-duration"),
            max_duration_s=config.getoption("--max-duration"),
            max_half_width=config.getoption("--half-width"),
            batch=config.getoption("--batch"),
            repeats=config.getoption("--repeats"),
            stop_on=stop_on_flag(config.getoption("--stop-on")),
        )
        backends = backends_flag(config.getoption("--backends"))
        db = config.getoption("--db") or default_db_path()
        report = config.getoption("--report")
        out = check_report_target(Path(report) if report else default_report_path(), database_path(db), flag="--report")
        catalog = load_catalog(Path(config.getoption("--catalog")))
        # An existing database or a server is opened now, so a wrong --db is a usage error before any
        # test runs; a new SQLite file is created at the first job, so --co or a session that runs no
        # job leaves none behind.
        new_file = database_path(db)
        if new_file is not None and not new_file.exists():
            check_new_database(new_file)
        pipeline = Pipeline(
            lab,
            models,
            open_store=lambda: Store(db),
            settings=settings,
            command="pytest",
            catalog=catalog,
            backends=backends,
            native_size_only=not config.getoption("--all-sizes"),  # as `edgebench run` plans by default
        )
        if not pipeline.plan(["latency"]):
            # As `edgebench run` refuses it: a filter (--backends, the devices' runtimes) that emptied the
            # plan would otherwise skip every test as an empty parameter set and exit 0.
            raise empty_plan(pipeline, ["latency"])
        if new_file is None or new_file.exists():
            pipeline.results_store()
    except EdgebenchError as exc:
        raise pytest.UsageError(f"edgebench: {exc.one_line()}") from None
    config.stash[_PIPELINE] = pipeline
    config.stash[_REPORT] = out


def _distributed(config: pytest.Config) -> bool:
    """Whether pytest-xdist runs this session's tests on workers: this is one, or it is about to start some.

    Read from xdist's own options (``-n``, ``--tx``, ``--dist``); ``-n 0`` and ``--co`` run in one process.
    """
    if hasattr(config, "workerinput"):
        return True
    if config.getoption("collectonly"):
        return False
    workers = config.getoption("numprocesses", None)
    if workers in ("auto", "logical") or (isinstance(workers, int) and workers > 0):
        return True
    return config.getoption("dist", "no") != "no" and bool(config.getoption("tx", None))


def _junit_value(value: Any) -> Any:
    """A record's value as a JUnit property: inf and nan as text, a list of sentences (the unstable
    reasons) as one readable line."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "; ".join(value)
    return value


def _pipeline(config: pytest.Config) -> Any:
    return config.stash.get(_PIPELINE, None)


def _skip_early(config: pytest.Config, reason: str) -> NoReturn:
    """Skip the test for ``reason`` before any job runs, and count it for the all-skipped check."""
    config.stash.setdefault(_SKIPPED_EARLY, []).append(reason)
    pytest.skip(reason)


@dataclass(frozen=True)
class NoJob:
    """What a suite's one test gets when the lab plans no job of its kind: why, to skip with."""

    reason: str


def _suite_kind(metafunc: pytest.Metafunc) -> str | None:
    """The test's ``edgebench_kind`` (latency without the marker), or None when it names no known kind.

    A bad value is kept for ``pytest_collection_modifyitems`` to refuse: raised here, pytest would
    report it as a collection error of the module rather than a usage error.
    """
    marker = metafunc.definition.get_closest_marker("edgebench_kind")
    if marker is None:
        return "latency"
    value = marker.args[0] if len(marker.args) == 1 and not marker.kwargs else None
    if value in SUITE_KINDS:
        return str(value)
    given = ", ".join([*map(repr, marker.args), *(f"{k}={v!r}" for k, v in marker.kwargs.items())])
    metafunc.config.stash.setdefault(_BAD_KINDS, {})[metafunc.definition.nodeid] = given
    return None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    names = [n for n in ("edgebench_job", "edgebench_group") if n in metafunc.fixturenames]
    if not names:
        return
    kind = _suite_kind(metafunc)
    pipeline = _pipeline(metafunc.config)
    if kind is None:
        # Refused once collection is done (pytest_collection_modifyitems); nothing is planned for it.
        for name in names:
            metafunc.parametrize(name, [None], ids=["bad-kind"])
        return
    if pipeline is None:
        for name in names:
            metafunc.parametrize(name, [pytest.param(None, marks=pytest.mark.skip(reason=NO_LAB))], ids=["no-lab"])
        return
    if "edgebench_job" in names:
        # Latency and parity suites read the same job (one device execution serves both).
        jobs = pipeline.plan(["robustness" if kind == "robustness" else "latency"])
        if jobs:
            metafunc.parametrize("edgebench_job", jobs, ids=[j.id for j in jobs])
        else:
            # The lab plans latency jobs (checked at configure), but no chosen model has the labels a
            # robustness job needs: one test that skips with the reason, so a session of this suite
            # alone does not pass on nothing (it exits 5, as when every job is skipped).
            chosen = ", ".join(m.name for m in pipeline.models)
            why = (
                f"no chosen model has a labelled eval set ({chosen}), so the robustness suite has no job; "
                "fix: choose a model with labels (--models)"
            )
            metafunc.parametrize("edgebench_job", [NoJob(why)], ids=["no-job"])
    if "edgebench_group" in names:
        # Planning costs no device time, so without --interleave the skipped groups still show what would run.
        marks = () if metafunc.config.getoption("--interleave") else (pytest.mark.skip(reason=NO_INTERLEAVE),)
        from .scenarios import interleave_groups

        groups = interleave_groups(pipeline.plan(["latency"]))
        metafunc.parametrize("edgebench_group", [pytest.param(g, id=g.id, marks=marks) for g in groups])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse a test whose ``edgebench_kind`` is not a known kind, before any test runs (also under --co)."""
    bad = config.stash.get(_BAD_KINDS, {})
    if bad:
        test, given = next(iter(bad.items()))
        more = f" (and {len(bad) - 1} more test(s))" if len(bad) > 1 else ""
        raise pytest.UsageError(
            f"edgebench: {test}{more}: @pytest.mark.edgebench_kind({given}) is not a suite kind; "
            f"fix: use one of: {', '.join(SUITE_KINDS)}"
        )


def _capabilities(job: Job) -> set[str]:
    device = job.device
    caps = set(device.tags) | {device.platform, job.variant.backend, job.variant.precision}
    if device.runtimes is not None:
        caps |= set(device.runtimes)
    return caps


@pytest.fixture
def edgebench_result(
    request: pytest.FixtureRequest, edgebench_job: Job | NoJob, record_property: Any
) -> Iterator[JobResult]:
    """Run the job on its device and yield its recorded result; skip when the device cannot run it."""
    if isinstance(edgebench_job, NoJob):
        _skip_early(request.config, edgebench_job.reason)
    for marker in request.node.iter_markers("requires"):
        missing = [c for c in marker.args if c not in _capabilities(edgebench_job)]
        if missing:
            _skip_early(request.config, f"{edgebench_job.device.name} lacks {', '.join(missing)}")
    pipeline = _pipeline(request.config)
    result: JobResult = pipeline.result_for(edgebench_job)
    flat = result.flat()
    for key in JUNIT_KEYS:
        if key in flat and flat[key] is not None:
            record_property(key, _junit_value(flat[key]))
    if result.status == "skipped":
        pytest.skip(result.message)
    yield result


@dataclass(frozen=True)
class _Interleaved:
    """How a group's interleaved comparison ended: its outcome, or why it was skipped or failed; and the
    variants left out because this host cannot build them."""

    outcome: InterleaveOutcome | None
    unbuilt: dict[str, str]  # job id -> why
    skipped: str = ""
    failed: str = ""


@pytest.fixture
def edgebench_interleaved(
    request: pytest.FixtureRequest, edgebench_group: InterleaveGroup, record_property: Any
) -> InterleaveOutcome:
    """The group's variants timed in interleaved rounds with the A/A self-check, once per session.

    A variant this host cannot build is left out (its JUnit status says why); the test skips when none
    can be built or the device lacks the runtime, and errors with the one-line reason when the run fails.
    """
    group = edgebench_group
    done = request.config.stash.setdefault(_INTERLEAVED, {})
    if group.id not in done:
        done[group.id] = _run_interleaved(_pipeline(request.config), group)
        if done[group.id].skipped:
            request.config.stash.setdefault(_SKIPPED_EARLY, []).append(done[group.id].skipped)
    ended = done[group.id]
    if ended.skipped:
        pytest.skip(ended.skipped)
    if ended.failed:
        pytest.fail(ended.failed, pytrace=False)
    outcome, unbuilt = ended.outcome, ended.unbuilt
    assert outcome is not None
    record_property("interleave_mode", outcome.mode)
    if outcome.aa is not None:
        record_property("aa_ratio", outcome.aa["ratio"])
        record_property("aa_ok", outcome.aa["ok"])
    for result in outcome.results:
        flat = result.flat()
        for key in ("p50_ms", "p99_ms", "n", "valid", "status"):
            record_property(f"{result.job_id}.{key}", _junit_value(flat[key]))
    for job_id, why in unbuilt.items():
        record_property(f"{job_id}.status", "skipped")
        record_property(f"{job_id}.message", why)
    return outcome


def _run_interleaved(pipeline: Any, group: InterleaveGroup) -> _Interleaved:
    """Build what this host can, then run it interleaved; or why the test skips or fails.

    A failure is recorded as an ``error`` result for each variant it took down, as a failed single job
    is, so the run (database, report) ends in error rather than passing on the other results.
    """
    from .scenarios import buildable, run_interleaved

    unbuilt: dict[str, str] = {}
    try:
        jobs, unbuilt = buildable(pipeline, group.jobs)
        if not jobs:
            why = f"no variant of {group.model} can be built for {group.device}: {'; '.join(unbuilt.values())}"
            return _Interleaved(None, unbuilt, skipped=why)
        return _Interleaved(run_interleaved(pipeline, jobs), unbuilt)
    except (CapabilityMissing, ToolchainMissing, DeviceOffline) as exc:
        return _Interleaved(None, unbuilt, skipped=f"{group.id}: {exc.one_line()}")
    except EdgebenchError as exc:
        for job in group.jobs:
            if job.id not in unbuilt:
                pipeline.record_error(job, exc, kind="interleaved")
        return _Interleaved(None, unbuilt, failed=f"{group.id}: {exc.one_line()}")


@pytest.fixture(scope="session")
def edgebench_pipeline(request: pytest.FixtureRequest) -> Any:
    """The session's pipeline (lab, catalog, store), for suites that need more than one job's result."""
    pipeline = _pipeline(request.config)
    if pipeline is None:
        pytest.skip(NO_LAB)
    return pipeline


@pytest.fixture(scope="session", autouse=True)
def _edgebench_suite_properties(record_testsuite_property: Any, request: pytest.FixtureRequest) -> None:
    pipeline = _pipeline(request.config)
    if pipeline is not None:
        record_testsuite_property("edgebench_run_id", pipeline.run_id)
        record_testsuite_property("edgebench_lab", pipeline.lab.name)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Mark the run and write its report; a session that ran no job (``--co``, all skipped early) records none."""
    pipeline = _pipeline(session.config)
    if pipeline is None:
        return
    interrupted = exitstatus == pytest.ExitCode.INTERRUPTED
    status = pipeline.finish("interrupted" if interrupted and pipeline.started else None)
    early = session.config.stash.get(_SKIPPED_EARLY, [])
    # Every job skipped (devices offline, a missing key, requires(...) on every test): pytest would call
    # that a pass, and a nightly lab that measured nothing would go green. Exit as pytest does when
    # nothing ran. Jobs skipped before the pipeline saw them start no run, so then there is none.
    all_skipped = status == "skipped" or (not pipeline.started and bool(early))
    if all_skipped and session.exitstatus == pytest.ExitCode.OK:
        reasons = [r.message for r in pipeline.results if r.message] + early
        session.config.stash[_ALL_SKIPPED] = next(iter(reasons), "")
        session.exitstatus = pytest.ExitCode.NO_TESTS_COLLECTED
    if not pipeline.started:
        return
    from .report.render import write_report

    out = session.config.stash[_REPORT]
    assert out is not None
    try:
        write_report(pipeline.results_store(), pipeline.run_id, out, flag="--report")
    except EdgebenchError as exc:
        session.config.stash[_REPORT] = None
        session.config.stash[_REPORT_ERROR] = exc.one_line()


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    pipeline = _pipeline(config)
    if pipeline is None:
        return
    terminalreporter.write_sep("-", "edgebench")
    all_skipped = (
        f"every job was skipped, nothing was measured (exit status 5): {config.stash[_ALL_SKIPPED]}"
        if _ALL_SKIPPED in config.stash
        else None
    )
    if not pipeline.started:
        terminalreporter.write_line("no job ran: no run recorded, no report written")
        if all_skipped:
            terminalreporter.write_line(all_skipped)
        return
    terminalreporter.write_line(f"run: {pipeline.run_id}")
    if all_skipped:
        terminalreporter.write_line(all_skipped)
    report = config.stash.get(_REPORT, None)
    if report is not None:
        terminalreporter.write_line(f"report: {report}")
    else:
        terminalreporter.write_line(f"report not written: {config.stash.get(_REPORT_ERROR, 'unknown reason')}")
    terminalreporter.write_line(f"database: {pipeline.results_store().location}")
