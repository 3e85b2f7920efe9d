"""pytest wiring: options, one test per (model x variant x device), JUnit properties, the report at the end.

Public pytest API only: ``parser.getgroup``, ``pytest.StashKey``, registered markers,
``record_property`` / ``record_testsuite_property``. Nothing happens unless ``--lab`` is given, so
installing edgebench does not change anyone else's test runs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .errors import EdgebenchError
from .records import Job, JobResult

_PIPELINE = pytest.StashKey["Any"]()
_REPORT = pytest.StashKey["Path | None"]()

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
    "mean_ms",
    "first_inference_ms",
    "valid",
    "status",
    "top1_acc",
    "stop_reason",
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
        "--native-size", action="store_true", help="only each model's catalog input shape, not its input_sizes"
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "edgebench_kind(name): which job kind a suite runs: latency, parity, robustness")
    config.addinivalue_line(
        "markers", "requires(capability): skip jobs on devices without it (a runtime, a precision or a tag)"
    )
    lab_file = config.getoption("--lab")
    if not lab_file:
        return
    from .catalog import load_catalog
    from .lab.inventory import load_lab
    from .paths import default_db_path, default_report_path
    from .pipeline import MeasureSettings, Pipeline
    from .store import Store

    try:
        lab = load_lab(Path(lab_file))
        models = load_catalog(Path(config.getoption("--catalog")), config.getoption("--models"))
        db = config.getoption("--db") or default_db_path()
        store = Store(str(db))
    except EdgebenchError as exc:
        raise pytest.UsageError(f"edgebench: {exc.one_line()}") from None
    quick = config.getoption("--quick")
    # A quick run still reports a throttled or contended job as unstable, but never sleeps to cool down.
    settings = (
        MeasureSettings(min_duration_s=0.5, max_duration_s=5.0, throttle_retries=0) if quick else MeasureSettings()
    )
    catalog = load_catalog(Path(config.getoption("--catalog")))
    backends = config.getoption("--backends")
    config.stash[_PIPELINE] = Pipeline(
        lab,
        models,
        store,
        settings=settings,
        command="pytest",
        catalog=catalog,
        backends={b.strip() for b in backends.split(",") if b.strip()} if backends else None,
        native_size_only=config.getoption("--native-size"),
    )
    report = config.getoption("--report")
    config.stash[_REPORT] = Path(report) if report else default_report_path()


def _pipeline(config: pytest.Config) -> Any:
    return config.stash.get(_PIPELINE, None)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "edgebench_job" not in metafunc.fixturenames:
        return
    pipeline = _pipeline(metafunc.config)
    marker = metafunc.definition.get_closest_marker("edgebench_kind")
    kind = marker.args[0] if marker and marker.args else "latency"
    if pipeline is None:
        metafunc.parametrize(
            "edgebench_job",
            [pytest.param(None, marks=pytest.mark.skip(reason="edgebench suites need --lab FILE"))],
            ids=["no-lab"],
        )
        return
    # Latency and parity suites read the same job (one device execution serves both).
    jobs = pipeline.plan(["robustness" if kind == "robustness" else "latency"])
    metafunc.parametrize("edgebench_job", jobs, ids=[j.id for j in jobs])


def _capabilities(job: Job) -> set[str]:
    device = job.device
    caps = set(device.tags) | {device.platform, job.variant.backend, job.variant.precision}
    if device.runtimes is not None:
        caps |= set(device.runtimes)
    return caps


@pytest.fixture
def edgebench_result(request: pytest.FixtureRequest, edgebench_job: Job, record_property: Any) -> Iterator[JobResult]:
    """Run the job on its device and yield its recorded result; skip when the device cannot run it."""
    for marker in request.node.iter_markers("requires"):
        missing = [c for c in marker.args if c not in _capabilities(edgebench_job)]
        if missing:
            pytest.skip(f"{edgebench_job.device.name} lacks {', '.join(missing)}")
    pipeline = _pipeline(request.config)
    result: JobResult = pipeline.result_for(edgebench_job)
    flat = result.flat()
    for key in JUNIT_KEYS:
        if key in flat and flat[key] is not None:
            value = flat[key]
            if isinstance(value, float) and not math.isfinite(value):
                value = str(value)
            record_property(key, value)
    if result.status == "skipped":
        pytest.skip(result.message)
    yield result


@pytest.fixture(scope="session")
def edgebench_pipeline(request: pytest.FixtureRequest) -> Any:
    """The session's pipeline (lab, catalog, store), for suites that need more than one job's result."""
    pipeline = _pipeline(request.config)
    if pipeline is None:
        pytest.skip("edgebench suites need --lab FILE")
    return pipeline


@pytest.fixture(scope="session", autouse=True)
def _edgebench_suite_properties(record_testsuite_property: Any, request: pytest.FixtureRequest) -> None:
    pipeline = _pipeline(request.config)
    if pipeline is not None:
        record_testsuite_property("edgebench_run_id", pipeline.run_id)
        record_testsuite_property("edgebench_lab", pipeline.lab.name)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    pipeline = _pipeline(session.config)
    if pipeline is None:
        return
    pipeline.finish()
    from .report.render import write_report

    out = session.config.stash[_REPORT]
    assert out is not None
    write_report(pipeline.store, pipeline.run_id, out)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    pipeline = _pipeline(config)
    if pipeline is None:
        return
    terminalreporter.write_sep("-", "edgebench")
    terminalreporter.write_line(f"run: {pipeline.run_id}")
    terminalreporter.write_line(f"report: {config.stash[_REPORT]}")
    terminalreporter.write_line(f"database: {pipeline.store.url.removeprefix('sqlite:///')}")
