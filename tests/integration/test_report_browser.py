"""The HTML report in a real browser: headless Chromium with no network renders every part of it.

The screenshot is kept at /tmp/edgebench-report.png for a human to look at.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.analyse import cpu_parallelism, production_checks
from harness.measure.stats import summarize
from harness.measure.throttle import assess_throttle, throttle_metrics
from harness.records import JobResult
from harness.report.render import write_report
from harness.store import RunInfo, Store

pytestmark = pytest.mark.integration

SCREENSHOT = Path("/tmp/edgebench-report.png")
RUN_ID = "rep000000001"
VALID_JOB = "tiny-cnn/onnxruntime-fp32/local"
INVALID_JOB = "small-cnn/onnxruntime-fp32/local"
OTHER_DEVICE_JOB = "tiny-cnn/onnxruntime-fp32/nuc"
INTERLEAVED_JOB = "tiny-cnn/onnxruntime-int8/local"
# Twice as fast as VALID_JOB's FP32 on the same device, but it fails parity.
PARITY_FAILING_JOB = "tiny-cnn/onnxruntime-int8/local"
PARITY_FAILURE = "top-1 drop 4.10 pp exceeds the budget of 1.00 pp"
# The Edge TPU runs no FP32: its speed-up is against LiteRT FP32 on the same device.
LITERT_JOB = "tiny-cnn/litert-fp32/coral"
EDGETPU_JOB = "tiny-cnn/edgetpu-int8/coral"
THROTTLE_REASON = "throttled: gpu rose 21.0 C during the run (limit 15 C): not at thermal steady state"
UNSTABLE: dict[str, Any] = {
    "unstable": True,
    "unstable_reasons": [THROTTLE_REASON],
    "retried_because": ["calibration workload 14% slower after the run than before (limit 10%)"],
    "power_mw": {"VDD_IN": 5123.0, "VDD_CPU_GPU_CV": 1800.0},
    "cv": 0.031,
    "duration_s": 3.25,
    "stop_reason": "time_cap",
    # As a run with bursts of slow calls records it (the summary's own count is overridden here).
    "p99_effective_n": 120,
}
# What the runner recorded around OTHER_DEVICE_JOB's loop: the GPU zone warmed by 21 C (THROTTLE_REASON), the
# clocks held, two threads had about one CPU, and a one-CPU container quota stalled 37 of 120 periods.
HOT_FACTS: dict[str, Any] = {
    "thermal": {
        "before": {"temperatures_c": {"cpu": 42.0, "gpu": 40.0}, "cpu_freq_mhz": [1500.0] * 4},
        "during": [{"temperatures_c": {"cpu": 48.0, "gpu": 61.0}, "cpu_freq_mhz": [1500.0] * 4, "foreign_cpu": 0.02}],
        "after": {"temperatures_c": {"cpu": 45.0, "gpu": 55.0}, "cpu_freq_mhz": [1500.0] * 4},
    },
    "cpu_quota": [
        {"group": "/lab.slice", "quota_cpus": 1.0, "periods": 120, "throttled_periods": 37, "throttled_s": 0.42}
    ],
    "loop_cpu_s": 3.15,
    "loop_wall_s": 3.25,
}
# VALID_JOB is a candidate for replacing INVALID_JOB's model (catalog production: small-cnn): of 200 inputs,
# the candidate is right on 195, the production model on 180, and they give the same class on 180.
SHADOW_INPUTS = 200
CAPACITY: dict[str, Any] = {
    "capacity_fps": [30.0, 15.0],
    "streams_at_30fps": 4,
    "streams_at_30fps_capped": False,
    "streams_at_15fps": 8,
    "streams_at_15fps_capped": True,
}


def scaled(result: JobResult, factor: float, precision: str = "int8") -> JobResult:
    """``result`` with every call ``factor`` times as long, as another precision."""
    assert result.samples_ns is not None
    samples = np.ceil(result.samples_ns * factor).astype(np.int64)
    return replace(result, precision=precision, latency=summarize(samples), samples_ns=samples)


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no Chromium binary (chromium, chromium-browser, google-chrome) on PATH")


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium as root, with every network lookup failing."""
    argv = [
        chromium_binary(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        f"--user-data-dir={profile}",
        # No network: names resolve to nothing and anything else goes to a closed port.
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--proxy-server=http://127.0.0.1:9",
        *args,
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


@dataclass
class Row:
    section: str | None
    attrs: dict[str, str]
    cells: list[str] = field(default_factory=list)


class Rows(HTMLParser):
    """Table rows of the rendered DOM, each with the id of the section it sits in and its cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[Row] = []
        self.style = ""
        self._section: str | None = None
        self._cell: list[str] | None = None
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "section":
            self._section = values.get("id")
        elif tag == "tr":
            self.rows.append(Row(self._section, values))
        elif tag in ("td", "th"):
            self._cell = []
        elif tag in ("br", "div") and self._cell is not None:
            self._cell.append(" ")
        elif tag == "style":
            self._in_style = True

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].cells.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "style":
            self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._in_style:
            self.style += data


@dataclass(frozen=True)
class Rendered:
    html: str
    dom: str
    rows: list[Row]
    style: str
    records: dict[str, dict[str, Any]]


@pytest.fixture(scope="module")
def rendered(
    run_once: Callable[[str, Callable[[Path], Any]], tuple[Path, Any]],
    make_result: Callable[..., JobResult],
    make_run: Callable[..., RunInfo],
) -> Rendered:
    """The report of a six-job run, rendered by Chromium once per session (one screenshot writer)."""

    def render(root: Path) -> dict[str, Any]:
        store = Store(root / "results.sqlite")
        store.start_run(make_run(RUN_ID))
        small = make_result(RUN_ID, INVALID_JOB, n=50, seed=1)
        candidate = make_result(RUN_ID, VALID_JOB, n=2000, metrics={"top1_acc": 0.975})
        assert small.latency is not None and candidate.latency is not None
        labels = np.arange(SHADOW_INPUTS) % 10
        new, old = labels.copy(), labels.copy()
        new[:5] = (labels[:5] + 1) % 10  # wrong on 0-4
        old[:20] = (labels[:20] + 2) % 10  # wrong on 0-19, never alike: agreement 180 of 200
        logits = np.eye(10, dtype=np.float32)
        shadow, _ = production_checks(logits[new], logits[old], labels, candidate.latency, small.latency)
        shadow = {"production_model": "small-cnn", **shadow}
        store.add_result(replace(candidate, metrics={**candidate.metrics, **shadow}))
        reasons = "; ".join(small.latency.invalid_reasons)
        store.add_result(replace(small, status="failed", message=f"statistics INVALID: {reasons}"))
        readings = throttle_metrics({}, [assess_throttle(HOT_FACTS)])
        assert readings["unstable_reasons"][0] == THROTTLE_REASON
        hot = {**readings, "cpu_parallelism": cpu_parallelism([HOT_FACTS]), "cpu_affinity": [0, 1], **UNSTABLE}
        hot["unstable_reasons"] = readings["unstable_reasons"]
        store.add_result(make_result(RUN_ID, OTHER_DEVICE_JOB, n=1000, seed=2, metrics=hot))
        int8 = scaled(make_result(RUN_ID, PARITY_FAILING_JOB, n=2000), 0.5)
        parity = {"parity": (PARITY_FAILURE,)}
        store.add_result(replace(int8, status="failed", message=PARITY_FAILURE, failures=parity))
        store.add_result(make_result(RUN_ID, LITERT_JOB, n=2000, seed=5))
        store.add_result(scaled(make_result(RUN_ID, EDGETPU_JOB, n=2000, seed=5), 0.25))
        for job, ratio in ((VALID_JOB, 1.004), (INTERLEAVED_JOB, 1.004)):
            store.add_result(
                replace(
                    make_result(RUN_ID, job, n=900, seed=3),
                    kind="interleaved",
                    metrics={"interleave_mode": "in_process", "aa_check": {"ratio": ratio, "ok": True}},
                )
            )
        capacity = replace(make_result(RUN_ID, VALID_JOB, n=10), kind="capacity", latency=None, samples_ns=None)
        store.add_result(replace(capacity, metrics=CAPACITY, message="4 streams at 30 FPS, >=8 at 15 FPS"))
        store.finish_run(RUN_ID, "2026-11-24T10:01:00.000+00:00", "failed")
        report = write_report(store, RUN_ID, root / "report.html")
        records = {r["job_id"]: r for r in store.results(RUN_ID) if r["kind"] == "latency"}
        store.close()

        dumped = chromium(root / "profile", "--dump-dom", report.as_uri())
        assert dumped.returncode == 0, dumped.stderr[-2000:]
        assert "<html" in dumped.stdout, dumped.stderr[-2000:]
        SCREENSHOT.unlink(missing_ok=True)
        shot = chromium(root / "profile", f"--screenshot={SCREENSHOT}", "--window-size=1280,2600", report.as_uri())
        assert shot.returncode == 0, shot.stderr[-2000:]
        return {"html": report.read_text(encoding="utf-8"), "dom": dumped.stdout, "records": records}

    _, done = run_once("report-browser", render)
    parser = Rows()
    parser.feed(done["dom"])
    return Rendered(done["html"], done["dom"], parser.rows, parser.style, done["records"])


def ms(value: Any) -> str:
    assert isinstance(value, float)
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def job_row(rendered: Rendered, job: str) -> Row:
    found = [r for r in rendered.rows if r.section == "matrix" and r.attrs.get("data-job") == job]
    assert len(found) == 1, f"one row for {job} in the job matrix"
    return found[0]


def test_every_job_has_a_row_in_the_matrix(rendered: Rendered) -> None:
    jobs = [r.attrs["data-job"] for r in rendered.rows if r.section == "matrix" and "data-job" in r.attrs]
    assert jobs == [VALID_JOB, INVALID_JOB, OTHER_DEVICE_JOB, PARITY_FAILING_JOB, LITERT_JOB, EDGETPU_JOB]
    header = next(r for r in rendered.rows if r.section == "matrix")
    for title in ("model", "device", "n", "P50 ms", "P95 ms", "P99 ms", "statistics", "status"):
        assert title in header.cells


def test_percentiles_are_shown_with_their_intervals(rendered: Rendered) -> None:
    record = rendered.records[VALID_JOB]
    row = job_row(rendered, VALID_JOB)
    header = next(r for r in rendered.rows if r.section == "matrix").cells
    for q in ("p50", "p95", "p99"):
        cell = row.cells[header.index(f"{q.upper()} ms")]
        low, high = record[f"{q}_ci_ms"]
        assert cell == f"{ms(record[f'{q}_ms'])} {ms(low)}..{ms(high)}"
    assert row.cells[header.index("n")] == "2000"
    assert row.cells[header.index("top-1")] == "97.5%"


def test_valid_and_invalid_are_told_apart_with_the_reason(rendered: Rendered) -> None:
    header = next(r for r in rendered.rows if r.section == "matrix").cells
    valid = job_row(rendered, VALID_JOB).cells[header.index("statistics")]
    assert valid == "VALID"
    invalid_row = job_row(rendered, INVALID_JOB)
    invalid = invalid_row.cells[header.index("statistics")]
    assert invalid.startswith("INVALID")
    assert "P99 needs n >= 368 for a two-sided 95% interval; have 50" in invalid
    assert "no interval" in invalid_row.cells[header.index("P99 ms")]
    assert invalid_row.cells[header.index("status")].startswith("failed statistics INVALID")


def test_the_realtime_table_names_the_fastest_passing_variant_per_device(rendered: Rendered) -> None:
    rows = [r for r in rendered.rows if r.section == "realtime"]
    header, body = rows[0].cells, rows[1:]
    assert header == ["model", "input", "device", "fastest passing variant", "P99 ms", "30 FPS", "60 FPS"]
    assert [(r.cells[0], r.cells[1], r.cells[2]) for r in body] == [
        ("small-cnn", "3x16x16", "local"),
        ("tiny-cnn", "3x16x16", "coral"),
        ("tiny-cnn", "3x16x16", "local"),
        ("tiny-cnn", "3x16x16", "nuc"),
    ]
    # small-cnn's only job is INVALID: a tail latency without an interval is no basis for a yes, and
    # the table says no variant passed rather than leaving the model out.
    assert body[0].cells[3:] == ["no variant passed its checks (see the jobs below)", "-", "no", "no"]
    assert "data-job" not in body[0].attrs
    body = body[1:]
    assert body[0].cells[3] == "edgetpu int8, 1 thread"
    # The twice-as-fast INT8 fails parity: the FP32 answers for this device.
    local = body[1]
    assert local.attrs["data-job"] == VALID_JOB
    assert local.cells[3] == "onnxruntime fp32, 1 thread"
    record = rendered.records[VALID_JOB]
    assert local.cells[4] == f"{ms(record['p99_ms'])} up to {ms(record['p99_ci_ms'][1])}"
    assert local.cells[5:] == ["yes", "yes"], "a 2.4 ms model meets 30 and 60 FPS"
    # A yes from an unstable run is flagged where the PM reads it, not only in the quality table.
    assert body[2].cells[3] == "onnxruntime fp32, 1 thread (unstable: see below)"


def test_int8_speed_ups_are_against_the_fp32_reference_on_the_same_device(rendered: Rendered) -> None:
    header, body = section_rows(rendered, "precision")
    costs = {r.attrs["data-job"]: dict(zip(header, r.cells, strict=True)) for r in body}
    p50 = {job: r["p50_ms"] for job, r in rendered.records.items()}
    int8 = costs[PARITY_FAILING_JOB]
    assert int8["speed-up"] == f"{p50[VALID_JOB] / p50[PARITY_FAILING_JOB]:.2f}x" == "2.00x"
    assert int8["parity"] == f"fails {PARITY_FAILURE}"
    assert costs[EDGETPU_JOB]["speed-up"] == f"{p50[LITERT_JOB] / p50[EDGETPU_JOB]:.2f}x" == "4.00x"
    assert costs[EDGETPU_JOB]["threads"] == "1"


def test_the_chart_and_device_facts_are_drawn(rendered: Rendered) -> None:
    assert re.search(r"<svg[^>]*class=\"chart\"", rendered.dom)
    assert rendered.dom.count('class="p99"') == 6
    assert "test CPU" in rendered.dom


def test_the_report_needs_no_network(rendered: Rendered) -> None:
    for text in (rendered.html, rendered.dom):
        assert not re.search(r"""(?:src|href|action)\s*=\s*["']?\s*(?:https?:)?//""", text, re.IGNORECASE)
        assert not re.search(r"""url\(\s*["']?\s*(?:https?:)?//""", text, re.IGNORECASE)
        assert "@import" not in text
        assert "<script" not in text.lower() and "<link" not in text.lower()


def test_styles_reach_the_browser_unescaped(rendered: Rendered) -> None:
    # <style> is raw text: an escaped quote would stay a literal "&#34;" and break the declaration.
    assert rendered.style.strip(), "the styles are inlined"
    assert "&#34;" not in rendered.style and "&quot;" not in rendered.style and "&amp;" not in rendered.style
    assert '"Segoe UI"' in rendered.style


def test_a_screenshot_is_taken(rendered: Rendered) -> None:
    data = SCREENSHOT.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 20_000, "a blank page compresses to almost nothing"


def section_rows(rendered: Rendered, section: str) -> tuple[list[str], list[Row]]:
    rows = [r for r in rendered.rows if r.section == section]
    assert rows, f"the report has a {section} section"
    return rows[0].cells, rows[1:]


def test_unstable_results_are_marked_with_their_reasons_and_power(rendered: Rendered) -> None:
    header, body = section_rows(rendered, "quality")
    by_job = {(r.attrs["data-job"], r.attrs["data-kind"]): dict(zip(header, r.cells, strict=True)) for r in body}
    hot = by_job[(OTHER_DEVICE_JOB, "latency")]
    assert hot["stopped"] == "time_cap" and hot["loop s"] == "3.2" and hot["CV"] == "3.1%"
    assert hot["power"] == "5123 mW (VDD_IN)"
    assert hot["P99 independent calls"] == f"120 of {hot['n']}"
    assert hot["verdict"].startswith("unstable " + THROTTLE_REASON)
    assert "retried after: calibration workload 14% slower" in hot["verdict"]
    calm = by_job[(VALID_JOB, "latency")]
    assert calm["verdict"] == "stable" and calm["warm-up"] == "60" and calm["first call ms"] == "3.500"
    assert calm["P99 independent calls"] == "all"
    assert (INTERLEAVED_JOB, "interleaved") in by_job, "interleaved jobs are judged alike"


def test_the_trust_table_shows_the_devices_temperatures_clocks_cpus_and_quota(rendered: Rendered) -> None:
    header, body = section_rows(rendered, "quality")
    columns = ["temperature °C", "clock MHz", "CPUs used", "CPU quota", "P50 vs earlier runs"]
    assert header[header.index("P99 independent calls") + 1 : header.index("power")] == columns
    by_job = {(r.attrs["data-job"], r.attrs["data-kind"]): dict(zip(header, r.cells, strict=True)) for r in body}
    hot = by_job[(OTHER_DEVICE_JOB, "latency")]
    assert [hot[c] for c in columns] == [
        "40 \u2192 61 \u2192 55 gpu (rose most of 2)",
        "1500 \u2192 1500 4 CPUs, held during",
        "0.97 of 2 allowed",
        "1 CPU stalled 37 of 120 periods (31%)",
        "-",  # results stored without the comparison with earlier runs
    ]
    assert "the kernel stalled the runner in 37 of 120 scheduling periods" in hot["verdict"]
    # A device that reported none of these readings (the test lab's, like a VM's) shows "-".
    assert [by_job[(VALID_JOB, "latency")][c] for c in columns] == ["-"] * 5


def test_candidate_vs_production_is_shown_for_the_candidate(rendered: Rendered) -> None:
    header, body = section_rows(rendered, "production")
    assert re.search(r'<section id="production">\s*<h2>Candidate vs production</h2>', rendered.dom)
    assert [r.attrs["data-job"] for r in body] == [VALID_JOB]
    row = dict(zip(header, body[0].cells, strict=True))
    candidate, production = rendered.records[VALID_JOB], rendered.records[INVALID_JOB]
    assert (row["candidate"], row["device"], row["production model"]) == ("tiny-cnn", "local", "small-cnn")
    assert row["variant"] == "onnxruntime fp32, 1 thread"
    assert row["top-1 agreement"] == "90.0%" and row["top-1 candidate / production"] == "97.5% / 90.0%"
    low, high = candidate["production_acc_delta_ci_pp"]
    assert low < 7.5 < high and row["accuracy delta"] == f"+7.50 pp {low:+.2f}..{high:+.2f}"
    # The deltas are the candidate's latency minus the production model's, from the stored percentiles.
    p50_delta = candidate["p50_ms"] - production["p50_ms"]
    ratio = candidate["p50_ms"] / production["p50_ms"]
    assert row["P50 delta ms"] == f"{p50_delta:+.3f} {ratio:.2f}x production's"
    p99_ratio = candidate["p99_ms"] / production["p99_ms"]
    assert row["P99 delta ms"] == f"{candidate['p99_ms'] - production['p99_ms']:+.3f} {p99_ratio:.2f}x production's"
    assert row["production check"] == "not gated"


def test_interleaved_comparisons_show_the_aa_check(rendered: Rendered) -> None:
    header, body = section_rows(rendered, "interleaved")
    assert [r.attrs["data-job"] for r in body] == [VALID_JOB, INTERLEAVED_JOB]
    cells = dict(zip(header, body[0].cells, strict=True))
    assert cells["measured"] == "in process" and cells["A/A ratio"] == "1.004"


def test_capacity_says_how_many_streams_each_device_serves(rendered: Rendered) -> None:
    header, body = section_rows(rendered, "capacity")
    assert header == ["model", "device", "variant", "streams"]
    assert [r.cells for r in body] == [["tiny-cnn", "local", "onnxruntime fp32", "4 at 30 FPS, >=8 at 15 FPS"]]
