"""The pytest plugin through pytester: one test per job, results stored, JUnit properties, the report."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness.store import Store

pytestmark = pytest.mark.usefixtures("edgebench_env")

SUITE = """
import pytest

from harness.records import JobResult

pytestmark = pytest.mark.edgebench_kind("latency")


def test_latency(edgebench_result: JobResult) -> None:
    assert edgebench_result.status == "passed", edgebench_result.message
    assert edgebench_result.latency is not None and edgebench_result.latency.valid
"""

JOBS = ["tiny-a/onnxruntime-fp32-t1/local", "tiny-b/onnxruntime-fp32-t1/local"]
# The tiny models have no calibration set, so their INT8 variant cannot be built and is left out.
VARIANTS = ("onnxruntime-fp32-t1", "onnxruntime-fp16-t1")
UNBUILT = "onnxruntime-int8-t1"


@pytest.fixture
def two_model_catalog(tmp_path: Path, tiny_onnx: Path, tiny_catalog_yaml: Callable[..., str]) -> Path:
    """Two catalog entries over the tiny model, so a lab of one device plans two jobs."""
    directory = tmp_path / "two-models"
    directory.mkdir()
    shutil.copyfile(tiny_onnx, directory / "tiny.onnx")
    for name in ("tiny-a", "tiny-b"):
        (directory / f"{name}.yaml").write_text(tiny_catalog_yaml(name), encoding="utf-8")
    return directory


def run_inner(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """An inner pytest session; pytest-benchmark stays out (it only warns about the outer xdist)."""
    return pytester.runpytest("-p", "no:benchmark", *args)


def lab_args(lab: Path, catalog: Path, out: Path) -> list[str]:
    return [
        "--lab", str(lab), "--catalog", str(catalog), "--db", str(out / "results.sqlite"),
        "--report", str(out / "report.html"), "--quick",
    ]  # fmt: skip


def test_a_suite_runs_one_test_per_job_and_records_everything(
    pytester: pytest.Pytester, local_lab: Path, two_model_catalog: Path, tmp_path: Path
) -> None:
    pytester.makepyfile(test_suite=SUITE)
    out = tmp_path / "out"
    junit = out / "junit.xml"
    result = run_inner(pytester, *lab_args(local_lab, two_model_catalog, out), "-v", f"--junitxml={junit}")

    store = Store(out / "results.sqlite")
    try:
        run_id = store.resolve_run("latest")
        records = store.results(run_id)
        run = store.run_info(run_id)
    finally:
        store.close()
    # One test per planned job, in plan order, each recorded; the FP32 jobs of both models among them.
    job_ids = [r["job_id"] for r in records]
    assert set(JOBS) <= set(job_ids) and len(set(job_ids)) == len(job_ids)
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) + outcomes.get("skipped", 0) == len(records)
    assert outcomes.get("passed", 0) >= 2 and "failed" not in outcomes and "error" not in outcomes
    # The job id is the test id, so a CI dashboard names the model, variant and device.
    result.stdout.fnmatch_lines([f"*test_suite.py::test_latency[[]{job}[]] PASSED*" for job in JOBS])
    result.stdout.fnmatch_lines(["*- edgebench -*", f"run: {run_id}", f"report: {out / 'report.html'}", "database: *"])
    assert {r["status"] for r in records} <= {"passed", "skipped"}
    assert all(r["valid"] for r in records if r["status"] == "passed")
    assert run["command"] == "pytest" and run["status"] == "passed" and run["lab_name"] == "testlab"

    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    suite_props = {p.get("name"): p.get("value") for p in suite.iterfind("properties/property")}
    assert suite_props["edgebench_run_id"] == run_id
    assert suite_props["edgebench_lab"] == "testlab"
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert set(cases) == {f"test_latency[{job}]" for job in job_ids}
    for job in JOBS:
        record = next(r for r in records if r["job_id"] == job)
        case = cases[f"test_latency[{job}]"]
        props = {p.get("name"): p.get("value", "") for p in case.iterfind("properties/property")}
        assert props["model"] == record["model"]
        assert props["device"] == "local" and props["backend"] == "onnxruntime"
        assert props["valid"] == "True" and props["status"] == "passed"
        assert float(props["p99_ms"]) == pytest.approx(record["p99_ms"])
        assert props["p99_ci_ms"] == str(record["p99_ci_ms"])
        assert int(props["n"]) == record["n"] >= 368
        assert int(props["p99_effective_n"]) == record["p99_effective_n"] <= record["n"]
        assert props["stop_reason"] in ("converged", "time_cap", "max_iterations")
        # Whether to trust it and how accurate it is, beside the latency: a dashboard sees a green but
        # unstable job, and the parity figures, without opening the report.
        assert props["unstable"] == str(record["unstable"])
        if record["unstable"]:
            assert props["unstable_reasons"] == "; ".join(record["unstable_reasons"])
        assert float(props["top1_agreement"]) == pytest.approx(record["top1_agreement"])
        assert float(props["cpu_parallelism"]) == pytest.approx(record["cpu_parallelism"])

    html = (out / "report.html").read_text(encoding="utf-8")
    assert all(job in html for job in JOBS)


def test_the_parity_suite_fails_a_candidate_over_its_production_budget(
    pytester: pytest.Pytester,
    copy_suite: Callable[..., Path],
    local_lab: Path,
    tiny_catalog: Path,
    tiny_catalog_yaml: Callable[..., str],
    tmp_path: Path,
) -> None:
    """tiny-next would replace tiny-cnn and must be 100 times faster: it is the same network, so its
    parity tests fail with the production budget's message; tiny-cnn's pass."""
    budgets = "production: tiny-cnn\nbudgets:\n  production_p99_ratio: 0.01\n"
    (tiny_catalog / "tiny-next.yaml").write_text(tiny_catalog_yaml("tiny-next", budgets=budgets), encoding="utf-8")
    copy_suite("test_parity.py", as_name="test_parity_suite.py")
    out = tmp_path / "out"
    result = run_inner(pytester, *lab_args(local_lab, tiny_catalog, out), "--backends", "onnxruntime", "-v")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) >= 1 and outcomes.get("passed", 0) >= 1, result.stdout.str()[-3000:]
    failed = [line for line in result.stdout.lines if " FAILED" in line and "_suite.py::test_parity[" in line]
    assert failed and all("tiny-next/" in line for line in failed), failed
    result.stdout.fnmatch_lines(["*over budget production_p99_ratio 0.01x*"])
    _, records = stored_results(out / "results.sqlite")
    measured = [r for r in records if r["status"] != "skipped"]  # INT8 needs a calibration set tiny has not
    assert {r["model"] for r in measured} == {"tiny-cnn", "tiny-next"}
    for r in measured:
        assert (r["model"] == "tiny-next") == bool(r["failures"].get("production")), (r["job_id"], r["failures"])


def test_without_lab_the_suite_is_skipped_with_the_reason(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=SUITE)
    result = run_inner(pytester, "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*SKIPPED*edgebench suites need --lab FILE*"])
    assert "- edgebench -" not in result.stdout.str()


NEEDS_TENSORRT = """
import pytest

@pytest.mark.requires("tensorrt")
def test_int8(edgebench_result):
    raise AssertionError("must not run on a device without TensorRT")
"""
NEEDS_ORT = """
@pytest.mark.requires("onnxruntime", "generic-linux")
def test_ort(edgebench_result):
    assert edgebench_result.backend == "onnxruntime"
"""


def test_requires_skips_a_device_without_the_capability(
    pytester: pytest.Pytester, local_lab: Path, tiny_catalog: Path, tmp_path: Path
) -> None:
    pytester.makepyfile(test_trt=NEEDS_TENSORRT + NEEDS_ORT)
    result = run_inner(pytester, *lab_args(local_lab, tiny_catalog, tmp_path / "out"), "-rs")
    outcomes = result.parseoutcomes()
    # Every job of test_int8 skips before it runs; test_ort runs the jobs the device can.
    assert outcomes.get("passed", 0) >= 1 and "failed" not in outcomes, result.stdout.str()
    result.stdout.fnmatch_lines(["*SKIPPED*local lacks tensorrt*"])
    assert "must not run" not in result.stdout.str()


def test_a_session_where_requires_skips_every_job_exits_5_with_the_reason(
    pytester: pytest.Pytester, local_lab: Path, tiny_catalog: Path, tmp_path: Path
) -> None:
    """No job reached a device, so nothing was measured: the nightly CI must not read that as a pass."""
    pytester.makepyfile(test_trt=NEEDS_TENSORRT)
    out = tmp_path / "out"
    result = run_inner(pytester, *lab_args(local_lab, tiny_catalog, out), "-rs")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED, result.stdout.str()[-2000:]
    outcomes = result.parseoutcomes()
    assert set(outcomes) == {"skipped"} and outcomes["skipped"] >= 1
    result.stdout.fnmatch_lines(
        [
            "*- edgebench -*",
            "no job ran: no run recorded, no report written",
            "every job was skipped, nothing was measured (exit status 5): local lacks tensorrt",
        ]
    )
    assert_no_run(out / "results.sqlite")


def assert_no_run(db: Path) -> None:
    """The database holds no run (what `edgebench results` says about it), or was never created."""
    if not db.exists():
        return
    store = Store(db, read_only=True)
    try:
        assert store.list_runs() == []
    finally:
        store.close()


def stored_results(db: Path) -> tuple[str, list[dict[str, Any]]]:
    """The latest run's id and its flat records, as `edgebench results --format json` prints them."""
    store = Store(db)
    try:
        run_id = store.resolve_run("latest")
        return run_id, store.results(run_id)
    finally:
        store.close()


def case_properties(junit: Path) -> dict[str, dict[str, str]]:
    """Each JUnit test case's properties by test name."""
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    return {
        str(c.get("name")): {str(p.get("name")): p.get("value", "") for p in c.iterfind("properties/property")}
        for c in suite.findall("testcase")
    }


def test_interleave_runs_one_test_per_model_and_device_and_records_the_aa_check(
    pytester: pytest.Pytester,
    copy_suite: Callable[[str], Path],
    local_lab: Path,
    two_model_catalog: Path,
    tmp_path: Path,
) -> None:
    copy_suite("test_interleaved.py")
    out = tmp_path / "out"
    junit = out / "junit.xml"
    args = lab_args(local_lab, two_model_catalog, out)
    result = run_inner(pytester, *args, "--interleave", "-v", f"--junitxml={junit}")

    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [f"*test_interleaved.py::test_interleaved[[]{model}@local[]] PASSED*" for model in ("tiny-a", "tiny-b")]
    )
    run_id, records = stored_results(out / "results.sqlite")
    # Only the interleaved comparisons ran: each model's buildable variants, once, side by side.
    assert {r["kind"] for r in records} == {"interleaved"}
    assert sorted(r["job_id"] for r in records) == sorted(
        f"{model}/{variant}/local" for model in ("tiny-a", "tiny-b") for variant in VARIANTS
    )
    assert set(JOBS) <= {r["job_id"] for r in records}
    props = case_properties(junit)
    assert set(props) == {"test_interleaved[tiny-a@local]", "test_interleaved[tiny-b@local]"}
    for model in ("tiny-a", "tiny-b"):
        group = [r for r in records if r["model"] == model]
        case = props[f"test_interleaved[{model}@local]"]
        aa = group[0]["aa_check"]
        assert set(aa) == {"ratio", "ok", "tolerance"} and aa["tolerance"] == 0.01
        for r in group:
            assert r["status"] == "passed" and r["run_id"] == run_id
            assert r["aa_check"] == aa and r["interleave_mode"] == group[0]["interleave_mode"]
            assert r["interleaved_with"] == [o["job_id"] for o in group if o is not r]
            # The A/A copy agreed and the rounds shared one process, or the fallback is stated.
            if aa["ok"]:
                assert r["interleave_mode"] == "in_process"
            else:
                assert r["interleave_mode"] == "separate_processes"
                assert any("A/A self-check failed" in why for why in r["unstable_reasons"])
            assert float(case[f"{r['job_id']}.p50_ms"]) == pytest.approx(r["p50_ms"])
            assert float(case[f"{r['job_id']}.p99_ms"]) == pytest.approx(r["p99_ms"])
            assert int(case[f"{r['job_id']}.n"]) == r["n"] > 0
            assert case[f"{r['job_id']}.status"] == "passed"
        assert case["interleave_mode"] == group[0]["interleave_mode"]
        assert float(case["aa_ratio"]) == pytest.approx(aa["ratio"])
        assert case["aa_ok"] == str(aa["ok"])
        unbuilt = f"{model}/{UNBUILT}/local"
        assert case[f"{unbuilt}.status"] == "skipped"
        assert "needs a calibration set" in case[f"{unbuilt}.message"]
    # The HTML report written at session end shows the interleaved results too.
    html = (out / "report.html").read_text(encoding="utf-8")
    assert all(r["job_id"] in html for r in records)


def test_when_the_aa_copy_disagrees_the_suite_passes_on_separate_processes_and_says_so(
    pytester: pytest.Pytester, copy_suite: Callable[[str], Path], local_lab: Path, tiny_catalog: Path, tmp_path: Path
) -> None:
    copy_suite("test_interleaved.py")
    pytester.makeconftest(
        """
        import importlib

        import pytest


        @pytest.fixture(scope="session", autouse=True)
        def _aa_never_agrees():
            # The module in sys.modules, which the plugin imports: pytester drops it after every inner run,
            # so the package attribute (what `from harness import scenarios` reads) may be an older copy.
            scenarios = importlib.import_module("harness.scenarios")
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(scenarios, "AA_TOLERANCE", -1.0)
                yield
        """
    )
    out = tmp_path / "out"
    junit = out / "junit.xml"
    result = run_inner(pytester, *lab_args(local_lab, tiny_catalog, out), "--interleave", f"--junitxml={junit}")

    result.assert_outcomes(passed=1)
    _, records = stored_results(out / "results.sqlite")
    assert sorted(r["job_id"] for r in records) == sorted(f"tiny-cnn/{variant}/local" for variant in VARIANTS)
    for r in records:
        assert r["interleave_mode"] == "separate_processes" and r["aa_check"]["ok"] is False
        assert r["processes"] == 2 and len(r["process_p50_ms"]) == 2
        assert any("A/A self-check failed" in why for why in r["unstable_reasons"])
    case = case_properties(junit)["test_interleaved[tiny-cnn@local]"]
    assert case["interleave_mode"] == "separate_processes" and case["aa_ok"] == "False"


def test_an_interleaved_group_that_fails_is_recorded_and_the_run_ends_in_error(
    pytester: pytest.Pytester,
    copy_suite: Callable[[str], Path],
    local_lab_text: Callable[[Path], str],
    tiny_catalog: Path,
    tmp_path: Path,
) -> None:
    """The device's runner crashes on the interleaved command (a stand-in Python that fails for it and
    runs everything else): the test errors with the reason, and the database and report say error, not
    passed."""
    import sys

    python = tmp_path / "bin" / "python3"
    python.parent.mkdir()
    python.write_text(
        "#!/bin/sh\n"
        'case "$*" in *" interleave") echo "interleave: crashed (simulated)" >&2; exit 3;; esac\n'
        f'exec {sys.executable} "$@"\n',
        encoding="utf-8",
    )
    python.chmod(0o755)
    lab = tmp_path / "lab.yaml"
    lab.write_text(local_lab_text(tmp_path / "device").replace(sys.executable, str(python)), encoding="utf-8")
    copy_suite("test_interleaved.py")
    out = tmp_path / "out"
    result = run_inner(pytester, *lab_args(lab, tiny_catalog, out), "--interleave")

    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(errors=1)
    reason = "device 'local': runner gave no result (exit 3): interleave: crashed (simulated)"
    result.stdout.fnmatch_lines([f"*tiny-cnn@local: {reason}*"])
    run_id, records = stored_results(out / "results.sqlite")
    # Every variant the group ran is recorded with the error, as a failed single job is.
    assert sorted(r["job_id"] for r in records) == sorted(f"tiny-cnn/{variant}/local" for variant in VARIANTS)
    assert {(r["kind"], r["status"], r["message"]) for r in records} == {("interleaved", "error", reason)}
    store = Store(out / "results.sqlite", read_only=True)
    try:
        assert store.run_info(run_id)["status"] == "error"
    finally:
        store.close()
    assert (out / "report.html").is_file()


def test_without_interleave_the_groups_are_skipped_with_the_reason(
    pytester: pytest.Pytester, copy_suite: Callable[[str], Path], local_lab: Path, tiny_catalog: Path, tmp_path: Path
) -> None:
    copy_suite("test_interleaved.py")
    out = tmp_path / "out"
    result = run_inner(pytester, *lab_args(local_lab, tiny_catalog, out), "-v", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(
        ["*test_interleaved[[]tiny-cnn@local[]] SKIPPED*", "*SKIPPED*pass --interleave to run the interleaved*"]
    )
    # Skipped before any device time was spent: no run is recorded, no report written.
    assert_no_run(out / "results.sqlite")
    assert not (out / "report.html").exists()
    result.stdout.fnmatch_lines(["*- edgebench -*", "no job ran: no run recorded, no report written"])


def test_without_lab_the_interleaved_suite_is_skipped_with_the_reason(
    pytester: pytest.Pytester, copy_suite: Callable[[str], Path]
) -> None:
    copy_suite("test_interleaved.py")
    result = run_inner(pytester, "-rs", "--interleave")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*SKIPPED*edgebench suites need --lab FILE*"])


def test_a_bad_lab_is_a_usage_error_naming_the_file(
    pytester: pytest.Pytester, tiny_catalog: Path, tmp_path: Path
) -> None:
    pytester.makepyfile(test_suite=SUITE)
    lab = tmp_path / "broken-lab.yaml"
    lab.write_text("schema_version: 1\ndevices:\n  - name: x\n    platform: generic-linux\n    port: 99999\n")
    result = run_inner(pytester, *lab_args(lab, tiny_catalog, tmp_path / "out"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*edgebench: {lab}:5: devices[[]0[]].port: *fix: use a value <= 65535*"])
    assert "Traceback" not in result.stderr.str()
    assert not (tmp_path / "out" / "results.sqlite").exists()


def test_a_new_database_that_cannot_be_created_is_a_usage_error_before_any_test(
    pytester: pytest.Pytester, local_lab: Path, tiny_catalog: Path, tmp_path: Path
) -> None:
    """The database is created at the first job, but whether it can be is checked up front."""
    pytester.makepyfile(test_suite=SUITE)
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the database's directory would go\n")
    db = blocker / "results.sqlite"
    result = run_inner(pytester, "--lab", str(local_lab), "--catalog", str(tiny_catalog), "--db", str(db), "--quick")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"*edgebench: cannot create the results database {db}: {blocker} is not a writable directory; fix: *"]
    )
    assert blocker.read_text() == "a file where the database's directory would go\n"


def test_a_missing_lab_file_is_a_usage_error(pytester: pytest.Pytester, tiny_catalog: Path, tmp_path: Path) -> None:
    pytester.makepyfile(test_suite=SUITE)
    missing = tmp_path / "nowhere.yaml"
    result = run_inner(pytester, *lab_args(missing, tiny_catalog, tmp_path / "out"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*edgebench: {missing}: file not found*"])


def test_the_measurement_flags_reach_every_job(
    pytester: pytest.Pytester, local_lab: Path, tiny_catalog: Path, tmp_path: Path
) -> None:
    pytester.makepyfile(test_suite=SUITE)
    out = tmp_path / "out"
    # --quick's 5 s cap, cut by the flag; a 0.01% half-width cannot be reached in 0.3 s.
    flags = ["--max-duration", "0.3", "--half-width", "0.0001", "--batch", "2", "--backends", "onnxruntime"]
    flags += ["--repeats", "3", "--stop-on", "p99"]
    result = run_inner(pytester, *lab_args(local_lab, tiny_catalog, out), *flags)
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()[-2000:]
    store = Store(out / "results.sqlite")
    try:
        records = [r for r in store.results(store.resolve_run("latest")) if r["status"] == "passed"]
    finally:
        store.close()
    assert records
    for record in records:
        assert record["stop_reason"] == "time_cap" and record["batch"] == 2 and record["stop_on"] == ["p99"]
        # Three runner processes, each timing for the 0.3 s cap.
        assert record["repeats"] == 3 and 3 * 0.3 <= record["duration_s"] < 4.5


@pytest.mark.parametrize(
    ("flag", "expected"),
    [
        (["--min-duration", "9"], "*edgebench: --min-duration: the minimum duration 9 s is longer than the time cap*"),
        (["--repeats", "2"], "*edgebench: --repeats: repeats 2 cannot give a between-run interval*fix: use 1*"),
        (["--min-duration", "nan"], "*edgebench: --min-duration: nan is not a finite number of seconds; fix: *"),
        (["--max-duration", "inf"], "*edgebench: --max-duration: inf is not a finite number of seconds; fix: *"),
        (
            ["--backends", "nosuch"],
            "*edgebench: --backends: unknown backend 'nosuch'; fix: use one of: *onnxruntime*",
        ),
    ],
)
def test_a_contradictory_measurement_flag_is_a_usage_error(
    pytester: pytest.Pytester, local_lab: Path, tiny_catalog: Path, tmp_path: Path, flag: list[str], expected: str
) -> None:
    pytester.makepyfile(test_suite=SUITE)
    result = run_inner(pytester, *lab_args(local_lab, tiny_catalog, tmp_path / "out"), *flag)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([expected])
    assert not (tmp_path / "out" / "results.sqlite").exists()


def test_an_unknown_backend_is_one_usage_line_not_a_collection_error_per_suite(
    pytester: pytest.Pytester, local_lab: Path, tiny_catalog: Path, tmp_path: Path
) -> None:
    pytester.makepyfile(test_a=SUITE, test_b=SUITE)
    result = run_inner(pytester, *lab_args(local_lab, tiny_catalog, tmp_path / "out"), "--backends", "nosuch")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.lines if "edgebench:" in line]
    assert len(errors) == 1 and "--backends: unknown backend 'nosuch'" in errors[0]
    assert "Traceback" not in result.stderr.str() and "errors during collection" not in result.stdout.str()


def test_lab_under_pytest_xdist_is_a_usage_error(
    pytester: pytest.Pytester, local_lab: Path, tiny_catalog: Path, tmp_path: Path
) -> None:
    """Each xdist worker would build its own pipeline: two runs timing jobs on one device at once."""
    pytester.makepyfile(test_suite=SUITE)
    out = tmp_path / "out"
    result = run_inner(pytester, *lab_args(local_lab, tiny_catalog, out), "-p", "xdist", "-n", "2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*edgebench: --lab cannot run under pytest-xdist (-n): jobs on one device must not be timed at the "
            "same time; fix: drop -n for the suites*"
        ]
    )
    assert "Traceback" not in result.stderr.str()
    assert not (out / "results.sqlite").exists()
    # -n 0 keeps the session in one process, as xdist itself does.
    single = run_inner(pytester, *lab_args(local_lab, tiny_catalog, out), "-p", "xdist", "-n", "0", "--co", "-q")
    assert single.ret == pytest.ExitCode.OK, single.stderr.str()


def test_without_lab_pytest_xdist_runs_as_usual(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=SUITE, test_plain="def test_plain():\n    assert True\n")
    result = run_inner(pytester, "-p", "xdist", "-n", "2")
    assert result.ret == pytest.ExitCode.OK, result.stderr.str()
    result.assert_outcomes(passed=1, skipped=1)


def test_an_empty_lab_value_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=SUITE)
    result = run_inner(pytester, "--lab", "")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*edgebench: --lab: the value is empty; fix: pass an inventory file*"])


def test_a_report_path_that_is_a_directory_is_a_usage_error_before_any_job(
    pytester: pytest.Pytester, local_lab: Path, tiny_catalog: Path, tmp_path: Path
) -> None:
    pytester.makepyfile(test_suite=SUITE)
    out = tmp_path / "out"
    folder = tmp_path / "reports"
    folder.mkdir()
    args = [*lab_args(local_lab, tiny_catalog, out)]
    args[args.index("--report") + 1] = str(folder)
    result = run_inner(pytester, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*edgebench: --report: report path {folder} is a directory; fix: *"])
    assert not (out / "results.sqlite").exists() and list(folder.iterdir()) == []


def test_a_report_onto_the_database_is_a_usage_error(
    pytester: pytest.Pytester, local_lab: Path, tiny_catalog: Path, tmp_path: Path
) -> None:
    pytester.makepyfile(test_suite=SUITE)
    out = tmp_path / "out"
    args = [*lab_args(local_lab, tiny_catalog, out)]
    args[args.index("--report") + 1] = str(out / "results.sqlite")
    result = run_inner(pytester, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*edgebench: --report: report path * is the results database*"])


def test_a_session_where_every_job_was_skipped_does_not_exit_0(
    pytester: pytest.Pytester, tiny_catalog: Path, tmp_path: Path
) -> None:
    """The lab's only device cannot be reached (its key file is missing), so every job is skipped with
    the reason: the nightly CI must not read that as a pass. The run is recorded as skipped."""
    import sys

    lab = tmp_path / "lab.yaml"
    lab.write_text(
        "schema_version: 1\nname: unreachable\ndevices:\n  - name: board\n    platform: generic-linux\n"
        f"    host: 127.0.0.1\n    port: 1\n    user: nobody\n    identity: {tmp_path / 'no-such-key'}\n"
        f"    known_hosts: {tmp_path / 'known_hosts'}\n    python: {sys.executable}\n    runtimes: [onnxruntime]\n"
        "    threads: 1\n",
        encoding="utf-8",
    )
    pytester.makepyfile(test_suite=SUITE)
    out = tmp_path / "out"
    result = run_inner(pytester, *lab_args(lab, tiny_catalog, out), "-rs")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    result.assert_outcomes(skipped=3)
    result.stdout.fnmatch_lines(
        [f"every job was skipped, nothing was measured (exit status 5): *identity file {tmp_path / 'no-such-key'}*"]
    )
    _, rows = stored_results(out / "results.sqlite")
    assert rows and {r["status"] for r in rows} == {"skipped"}
    store = Store(out / "results.sqlite", read_only=True)
    try:
        assert [r["status"] for r in store.list_runs()] == ["skipped"]
    finally:
        store.close()


def test_collect_only_records_no_run(
    pytester: pytest.Pytester, local_lab: Path, tiny_catalog: Path, tmp_path: Path
) -> None:
    pytester.makepyfile(test_suite=SUITE)
    out = tmp_path / "out"
    result = run_inner(pytester, *lab_args(local_lab, tiny_catalog, out), "--co", "-q")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*test_suite.py::test_latency[[]tiny-cnn/onnxruntime-fp32-t1/local[]]*"])
    assert not (out / "results.sqlite").exists(), "a session that runs no job creates no database"
    assert not (out / "report.html").exists()


def test_a_session_plans_the_catalog_input_size_as_edgebench_run_does_and_all_sizes_adds_the_rest(
    pytester: pytest.Pytester, local_lab: Path, tiny_catalog: Path, tmp_path: Path
) -> None:
    entry = tiny_catalog / "tiny-cnn.yaml"
    entry.write_text(entry.read_text(encoding="utf-8") + "input_sizes: [16, 12]\n", encoding="utf-8")
    pytester.makepyfile(test_suite=SUITE)
    out = tmp_path / "out"
    native = run_inner(pytester, *lab_args(local_lab, tiny_catalog, out), "--co", "-q")
    assert native.ret == pytest.ExitCode.OK
    native.stdout.fnmatch_lines(["*test_latency[[]tiny-cnn/onnxruntime-fp32-t1/local[]]*"])
    assert "12px" not in native.stdout.str(), "the extra sizes are opt-in, as with edgebench run"
    every = run_inner(pytester, *lab_args(local_lab, tiny_catalog, out), "--co", "-q", "--all-sizes")
    every.stdout.fnmatch_lines(["*test_latency[[]tiny-cnn/onnxruntime-fp32-12px-t1/local[]]*"])


def test_options_appear_in_help(pytester: pytest.Pytester) -> None:
    result = run_inner(pytester, "--help")
    result.stdout.fnmatch_lines(
        [
            "*edgebench device-lab benchmarking*",
            "*--lab=FILE*",
            "*--models=GLOB*",
            "*--min-duration=S*",
            "*--half-width=F*",
            "*--interleave*interleaved suite*",
        ]
    )


def test_markers_are_registered(pytester: pytest.Pytester) -> None:
    result = run_inner(pytester, "--markers")
    for marker in ("requires(capability)", "edgebench_kind(name)"):
        result.stdout.fnmatch_lines([f"*@pytest.mark.{marker}:*"])
    result.stdout.fnmatch_lines(["*@pytest.mark.edgebench_kind(name):*robustness, or interleaved*--interleave*"])


def test_a_backend_no_device_runs_is_a_usage_error_as_with_edgebench_run(
    pytester: pytest.Pytester, local_lab: Path, tiny_catalog: Path, tmp_path: Path
) -> None:
    """The filter emptied the plan: without the check every test skips as an empty parameter set and
    the session exits 0, though nothing was measured."""
    pytester.makepyfile(test_suite=SUITE)
    out = tmp_path / "out"
    result = run_inner(pytester, *lab_args(local_lab, tiny_catalog, out), "--backends", "tensorrt")
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()[-2000:]
    errors = [line for line in result.stderr.lines if "edgebench:" in line]
    assert errors == [
        f"ERROR: edgebench: --backends: no device of lab 'testlab' ({local_lab}) runs tensorrt, so no job was "
        "planned; fix: use backends its devices run: onnxruntime"
    ]
    assert "Traceback" not in result.stderr.str()
    assert not (out / "results.sqlite").exists() and not (out / "report.html").exists()


def test_a_robustness_suite_with_no_labelled_model_does_not_pass_on_nothing(
    pytester: pytest.Pytester, copy_suite: Callable[..., Path], local_lab: Path, tiny_catalog: Path, tmp_path: Path
) -> None:
    """tiny-cnn's eval set has no labels, so it plans no robustness job: the suite's one test skips with
    the reason, and a session of that suite alone exits 5, as when every job is skipped."""
    copy_suite("test_robustness.py", as_name="test_robustness_suite.py")
    out = tmp_path / "out"
    result = run_inner(pytester, *lab_args(local_lab, tiny_catalog, out), "-rs")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED, result.stdout.str()[-2000:]
    result.assert_outcomes(skipped=1)
    why = "no chosen model has a labelled eval set (tiny-cnn), so the robustness suite has no job"
    result.stdout.fnmatch_lines(
        [f"every job was skipped, nothing was measured (exit status 5): {why}; fix: *", f"*SKIPPED*{why}*"]
    )
    assert_no_run(out / "results.sqlite")


MISSPELLED_KIND = """
import pytest

pytestmark = pytest.mark.edgebench_kind("robustnes")


def test_robust(edgebench_result):
    raise AssertionError("must not run a job for a misspelled kind")
"""


@pytest.mark.parametrize("with_lab", [True, False], ids=["lab", "no-lab"])
def test_a_misspelled_edgebench_kind_is_a_usage_error_naming_the_test(
    pytester: pytest.Pytester, local_lab: Path, tiny_catalog: Path, tmp_path: Path, with_lab: bool
) -> None:
    """Not silently the latency job: the marker's value is refused before any test runs."""
    pytester.makepyfile(test_kinds=MISSPELLED_KIND)
    out = tmp_path / "out"
    result = run_inner(pytester, *(lab_args(local_lab, tiny_catalog, out) if with_lab else []))
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()[-2000:]
    result.stderr.fnmatch_lines(
        [
            "ERROR: edgebench: *test_kinds.py::test_robust: @pytest.mark.edgebench_kind('robustnes') is not a suite "
            "kind; fix: use one of: latency, parity, robustness, interleaved"
        ]
    )
    assert "must not run" not in result.stdout.str() and "Traceback" not in result.stderr.str()
    assert not (out / "results.sqlite").exists()


def test_the_interleaved_suite_fails_a_comparison_whose_p99_is_invalid(
    pytester: pytest.Pytester,
    copy_suite: Callable[[str], Path],
    local_lab_text: Callable[[Path], str],
    tiny_catalog: Path,
    tmp_path: Path,
) -> None:
    """100 timed calls per variant (the lab's fixed count) leave P99 without an interval (it needs
    368): the comparison cannot say which variant is faster at the tail, so its test fails saying so.
    (When the A/A copy disagrees, two processes of 100 calls each are pooled: 200, still INVALID.)"""
    lab = tmp_path / "lab.yaml"
    lab.write_text(local_lab_text(tmp_path / "device") + "measure:\n  iterations: 100\n", encoding="utf-8")
    copy_suite("test_interleaved.py")
    out = tmp_path / "out"
    result = run_inner(pytester, *lab_args(lab, tiny_catalog, out), "--interleave", "--backends", "onnxruntime")
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()[-3000:]
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*INVALID percentiles (tiny-cnn/onnxruntime-fp32-t1/local: P99 needs n >= 368 for a two-sided 95% "
            "interval; have *; fix: give each variant more timed calls*"
        ]
    )
    _, records = stored_results(out / "results.sqlite")
    assert records and all(r["n"] in (100, 200) and not r["valid"] for r in records)  # 200: the fallback pools 2
