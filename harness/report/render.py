"""Render one self-contained HTML report of a run from the store, with jinja2 templates under reports/.

The file inlines its styles and draws its charts as inline SVG, so it opens offline, in a mail
attachment or a CI artifact viewer, with no network and no JavaScript.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import markupsafe

from .. import __version__
from ..errors import ConfigError
from ..records import REFERENCE_BACKENDS
from ..store import Store

TEMPLATES = Path(__file__).resolve().parents[2] / "reports"
REALTIME_BUDGETS_MS = {"30 FPS": 1000.0 / 30, "60 FPS": 1000.0 / 60}


@dataclass(frozen=True)
class Bar:
    """One row of the latency chart, in SVG user units."""

    label: str
    y: float
    p50_x: float
    ci_lo_x: float
    ci_hi_x: float
    p99_x: float
    p50_ms: float
    p99_ms: float
    valid: bool


@dataclass(frozen=True)
class Cell:
    """A compact table cell: the reading, and a smaller line under it that says which sensor or limit."""

    text: str
    detail: str = ""


def _fmt_ms(value: Any) -> str:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return "-"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def _fmt_ci(value: Any) -> str:
    if not value:
        return "no interval"
    return f"{_fmt_ms(value[0])}..{_fmt_ms(value[1])}"


def _fmt_pct(value: Any) -> str:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return "-"
    return f"{100 * value:.1f}%"


def _chart(rows: list[dict[str, Any]], width: float = 640.0, row_h: float = 22.0) -> dict[str, Any]:
    measured = [r for r in rows if isinstance(r.get("p50_ms"), (int, float)) and r.get("n")]
    if not measured:
        return {"bars": [], "height": 0, "width": width, "ticks": []}
    top = max(float(r["p99_ci_ms"][1] if r.get("p99_ci_ms") else r["p99_ms"]) for r in measured) * 1.08
    scale = width / top if top > 0 else 1.0
    bars = []
    for i, r in enumerate(measured):
        ci = r.get("p50_ci_ms") or [r["p50_ms"], r["p50_ms"]]
        bars.append(
            Bar(
                label=r["job_id"],
                y=i * row_h,
                p50_x=r["p50_ms"] * scale,
                ci_lo_x=ci[0] * scale,
                ci_hi_x=ci[1] * scale,
                p99_x=r["p99_ms"] * scale,
                p50_ms=r["p50_ms"],
                p99_ms=r["p99_ms"],
                valid=bool(r["valid"]),
            )
        )
    step = _nice_step(top / 5)
    ticks = [(t * scale, _fmt_ms(t)) for t in _frange(0.0, top, step)]
    return {"bars": bars, "height": len(bars) * row_h, "width": width, "ticks": ticks}


def _nice_step(raw: float) -> float:
    if raw <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(raw))
    for mult in (1, 2, 5, 10):
        if raw <= mult * power:
            return float(mult * power)
    return float(10 * power)


def _frange(start: float, stop: float, step: float) -> list[float]:
    values, v = [], start
    while v <= stop + 1e-12:
        values.append(v)
        v += step
    return values


Options = tuple[tuple[str, Any], ...]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _options(r: dict[str, Any]) -> Options:
    """The variant's options as asked for, in the sorted, hashable form a ``Variant`` carries."""
    options = r.get("variant_options")
    return tuple(sorted(options.items())) if isinstance(options, dict) else ()


def _variant_label(r: dict[str, Any]) -> str:
    """A variant as a reader tells it from its siblings: backend, precision, threads, options."""
    parts = [f"{r['backend']} {r['precision']}"]
    threads = r.get("threads")
    if isinstance(threads, int):
        parts.append(f"{threads} thread{'' if threads == 1 else 's'}")
    parts += [f"{key}={value}" for key, value in _options(r)]
    return ", ".join(parts)


def _p99_high(r: dict[str, Any]) -> float | None:
    ci = r.get("p99_ci_ms")
    return float(ci[1]) if isinstance(ci, list) and len(ci) == 2 and _number(ci[1]) else None


def _may_answer(r: dict[str, Any]) -> bool:
    """Whether a row may answer the real-time question: every check of its job passed, parity included."""
    parity = (r.get("failures") or {}).get("parity")
    return r.get("status") == "passed" and not parity and bool(r.get("valid")) and _number(r.get("p99_ms"))


def _realtime(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model, input size and device: the passing variant with the lowest P99 upper end, and the budgets it meets.

    A budget is met when the upper end of P99's interval fits, so the variant whose upper end is lowest
    meets every budget that any passing variant meets: it answers them all. Input sizes stay apart, as a
    smaller input is another model to the reader (its accuracy differs), not a faster variant.
    """
    best: dict[tuple[str, tuple[int, ...], str], tuple[tuple[float, float, str], dict[str, Any]]] = {}
    measured: set[tuple[str, tuple[int, ...], str]] = set()
    for r in rows:
        if r.get("status") in ("passed", "failed") and r.get("input_shape"):
            measured.add((r["model"], tuple(r["input_shape"]), r["device"]))
        high = _p99_high(r)
        if high is None or not _may_answer(r):
            continue
        key = (r["model"], tuple(r["input_shape"]), r["device"])
        rank = (high, float(r["p99_ms"]), str(r["job_id"]))
        if key not in best or rank < best[key][0]:
            best[key] = (rank, r)
    table: list[dict[str, Any]] = []
    # Measured there, but no variant passed: said so, not left out (a missing row reads as "not tested").
    for model, shape, device in sorted(measured - set(best)):
        table.append(
            {
                "model": model,
                "input": "x".join(map(str, shape[1:])),
                "device": device,
                "variant": None,
                "job_id": None,
                "meets": dict.fromkeys(REALTIME_BUDGETS_MS, False),
            }
        )
    for (model, shape, device), ((high, _, _), r) in sorted(best.items(), key=lambda item: item[0]):
        table.append(
            {
                "model": model,
                "input": "x".join(map(str, shape[1:])),
                "device": device,
                "variant": _variant_label(r),
                "job_id": r["job_id"],
                "p99_ms": r["p99_ms"],
                "p99_high_ms": high,
                "unstable": bool(r.get("unstable")),
                "meets": {name: high <= budget for name, budget in REALTIME_BUDGETS_MS.items()},
            }
        )
    return sorted(table, key=lambda row: (row["model"], row["input"], row["device"]))


def _fp32_baseline(r: dict[str, Any], fp32: dict[tuple[Any, ...], dict[Options, float]]) -> float | None:
    """The P50 of the row's FP32 reference (``Variant.reference``) in this run, or None if the run has none.

    The reference is the same model, device, input, threads and options at FP32, on the reference backend
    for a backend without FP32 (LiteRT for the Edge TPU). That backend runs with the device's options for
    it, which this row does not carry: the run's one FP32 variant of it is the reference, and with
    several to choose from the report shows no speed-up rather than a guess.
    """
    backend = REFERENCE_BACKENDS.get(r["backend"], r["backend"])
    measured = fp32.get((r["model"], r["device"], tuple(r["input_shape"]), r.get("threads"), backend), {})
    if backend == r["backend"]:
        return measured.get(_options(r))
    return next(iter(measured.values())) if len(measured) == 1 else None


def _precision_costs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per variant: its speed-up over its FP32 reference on the same device, and its parity."""
    fp32: dict[tuple[Any, ...], dict[Options, float]] = defaultdict(dict)
    for r in rows:
        if r["precision"] == "fp32" and _number(r.get("p50_ms")):
            key = (r["model"], r["device"], tuple(r["input_shape"]), r.get("threads"), r["backend"])
            fp32[key][_options(r)] = r["p50_ms"]
    table = []
    for r in rows:
        if not _number(r.get("p50_ms")):
            continue
        base = _fp32_baseline(r, fp32)
        table.append(
            {
                **r,
                "speedup": (base / r["p50_ms"]) if base and r["p50_ms"] else None,
                "parity_failures": (r.get("failures") or {}).get("parity", []),
            }
        )

    return sorted(table, key=_variant_order)


def _variant_order(r: dict[str, Any]) -> tuple[Any, ...]:
    """Rows of one model and device together, its variants by backend, input, threads, options, precision."""
    threads = r.get("threads")
    return (
        *(r["model"], r["device"], r["backend"], r["input_shape"]),
        *(threads is None, threads or 0, str(_options(r)), r["precision"]),
    )


# The rail that stands for the whole device, where a platform reports one: Jetson's board input,
# Apple silicon's CPU + GPU + ANE sum, an Intel package.
HEADLINE_RAILS = ("VDD_IN", "VIN_SYS_5V0", "combined_cpu_gpu_ane", "package")


def _power(metrics: dict[str, Any]) -> str:
    rails = metrics.get("power_mw") or {}
    if not rails:
        return "-"
    name = next((r for r in HEADLINE_RAILS if r in rails), None)
    if name is None:
        return ", ".join(f"{k} {v:.0f} mW" for k, v in sorted(rails.items()))
    return f"{rails[name]:.0f} mW ({name})"


def _quality(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per measured job: how the loop ended, warm-up beside the cold first call, stability and its reasons."""
    table = []
    for r in rows:
        if not r.get("n"):
            continue
        reasons = list(r.get("unstable_reasons") or [])
        retried = list(r.get("retried_because") or [])
        table.append(
            {
                **r,
                "verdict": "unstable" if reasons or r.get("unstable") else "stable",
                "reasons": reasons,
                "retried": retried,
                "power": _power(r),
                "independent": _independent(r),
                "readings": {
                    "temperature": _temperatures(r),
                    "clock": _clocks(r),
                    "cpus": _cpus_used(r),
                    "quota": _quota(r),
                    "history": _history(r),
                },
            }
        )
    return table


def _reading(r: dict[str, Any], when: str, field: str) -> Any:
    """One part of the thermal summary a result carries (``throttle_metrics``' ``thermal``), or None."""
    thermal = r.get("thermal")
    part = thermal.get(when) if isinstance(thermal, dict) else None
    return part.get(field) if isinstance(part, dict) else None


def _celsius(values: Any) -> dict[str, float]:
    if not isinstance(values, dict):
        return {}
    return {str(zone): float(t) for zone, t in values.items() if _number(t)}


def _temperatures(r: dict[str, Any]) -> Cell:
    """Before -> peak -> after of the zone that rose most (the one the throttle check judges), in degrees C.

    "before" is each zone's first reading, "peak" the hottest reading before, during or after the loop.
    A Mac reports no temperatures, only a thermal pressure level: that is shown instead.
    """
    start, peak = _celsius(_reading(r, "before", "temperatures_c")), _celsius(_reading(r, "max", "temperatures_c"))
    after = _celsius(_reading(r, "after", "temperatures_c"))
    if not peak:
        thermal = r.get("thermal")
        pressure = thermal.get("thermal_pressure") if isinstance(thermal, dict) else None
        return Cell(f"pressure {', '.join(map(str, pressure))}") if pressure else Cell("-")
    zone = max(sorted(peak), key=lambda z: (peak[z] - start.get(z, peak[z]), peak[z]))
    text = " \u2192 ".join(f"{t:.0f}" if t is not None else "-" for t in (start.get(zone), peak[zone], after.get(zone)))
    return Cell(text, zone if len(peak) == 1 else f"{zone} (rose most of {len(peak)})")


def _mhz(values: list[float]) -> str:
    low, high = min(values), max(values)
    return f"{high:.0f}" if round(low) == round(high) else f"{low:.0f}-{high:.0f}"


def _clocks(r: dict[str, Any]) -> Cell:
    """The CPU clocks before -> after the run (MHz), and how low they went during the loop.

    The summary keeps the CPU clocks before and after, each CPU's lowest clock during the loop
    (``min``; results from before it was kept lack it) and ``freq_drop``, the largest fall of any one
    CPU or GPU clock while the loop ran below where it started (``harness.measure.throttle``).
    """
    before = [float(f) for f in _reading(r, "before", "cpu_freq_mhz") or [] if _number(f)]
    after = [float(f) for f in _reading(r, "after", "cpu_freq_mhz") or [] if _number(f)]
    lowest = [float(f) for f in _reading(r, "min", "cpu_freq_mhz") or [] if _number(f)]
    during = ""
    if _number(r.get("freq_drop")):
        drop = float(r["freq_drop"])
        low = f", lowest {min(lowest):.0f}" if lowest and drop >= 0.005 else ""
        during = f"fell {100 * drop:.0f}% during{low}" if drop >= 0.005 else "held during"
    if not before and not after:
        return Cell(during or "-")
    text = f"{_mhz(before) if before else '-'} \u2192 {_mhz(after) if after else '-'}"
    cpus = max(len(before), len(after))
    return Cell(text, ", ".join(p for p in ("1 CPU" if cpus == 1 else f"{cpus} CPUs", during) if p))


def _cpus_used(r: dict[str, Any]) -> Cell:
    """``cpu_parallelism``: the CPUs the runtime's threads really had, of the CPUs the runner was allowed on."""
    used = r.get("cpu_parallelism")
    if not _number(used):
        return Cell("-")
    allowed = r.get("cpu_affinity")
    return Cell(f"{used:.2f}", f"of {len(allowed)} allowed" if isinstance(allowed, list) and allowed else "")


# The numbers of ``harness.measure.throttle``'s stall sentence, one per stalled run of a repeated job.
_STALLS = re.compile(r"stalled the runner in (\d+) of (\d+) scheduling periods")


def _quota(r: dict[str, Any]) -> Cell:
    """The runner's CPU quota (``cpu_quota_cpus``) and in how many scheduling periods it stalled the loop.

    The counts are only recorded inside the ``cpu_quota_stalls`` sentence; the sentence is read back here
    rather than stored twice, and one that no longer parses still says the loop was stalled.
    """
    cpus = r.get("cpu_quota_cpus")
    if not _number(cpus):
        return Cell("-")
    text = f"{cpus:g} CPU{'' if cpus == 1 else 's'}"
    sentence = r.get("cpu_quota_stalls")
    if not sentence:
        return Cell(text, "never stalled the loop")
    counts = [(int(stalled), int(periods)) for stalled, periods in _STALLS.findall(str(sentence))]
    if not counts:
        return Cell(text, "stalled the loop (see the verdict)")
    if len(counts) == 1:
        stalled, periods = counts[0]
        share = f" ({100 * stalled / periods:.0f}%)" if periods else ""
        return Cell(text, f"stalled {stalled} of {periods} periods{share}")
    runs = ", ".join(f"{stalled} of {periods}" for stalled, periods in counts)
    return Cell(text, f"stalled {runs} periods in {len(counts)} runs")


def _history(r: dict[str, Any]) -> Cell:
    """This P50 against the median of the same artifact's last runs on the device (``history_metrics``).

    "-" with how many there were when fewer than three (the comparison needs three), nothing for a
    result from before the comparison existed.
    """
    runs = r.get("history_runs")
    if not isinstance(runs, int):
        return Cell("-")
    ratio = r.get("history_p50_ratio")
    if not _number(ratio):
        return Cell("-", "no earlier run" if runs == 0 else f"{runs} earlier run{'s' if runs > 1 else ''}, 3 needed")
    return Cell(f"{ratio:.2f}x", f"of the last {runs} runs' median")


def _production(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per candidate variant with a production model (``production:`` in the catalog): the shadow comparison.

    ``production_model`` names the model it would replace; without ``production_top1_agreement`` the
    production model's own job was not measured (``production_status`` says how it ended).
    """
    table = []
    for r in rows:
        if not r.get("production_model"):
            continue
        failures = list((r.get("failures") or {}).get("production") or [])
        compared = _number(r.get("production_top1_agreement"))
        table.append(
            {
                **r,
                "variant": _variant_label(r),
                "production_failures": failures,
                "compared": compared,
                "production_ci": _pair(r.get("production_acc_delta_ci_pp")),
            }
        )
    return sorted(table, key=_variant_order)


def _interleaved(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Interleaved results labelled as a reader tells the variants apart: threads, options and input size."""
    return [
        {**r, "variant": _variant_label(r), "input": "x".join(map(str, (r.get("input_shape") or [])[1:])) or "-"}
        for r in rows
    ]


def _pair(value: Any) -> tuple[float, float] | None:
    if isinstance(value, list) and len(value) == 2 and all(_number(v) for v in value):
        return float(value[0]), float(value[1])
    return None


def _independent(r: dict[str, Any]) -> str:
    """How many independent calls P99's interval rests on: "all" unless slow calls came in bursts.

    A repeated job's interval rests on its runs instead: "3 runs".
    """
    if isinstance(r.get("repeats"), int):
        return f"{r['repeats']} runs"
    worth, n = r.get("p99_effective_n"), r.get("n")
    if not isinstance(worth, int) or not isinstance(n, int):
        return "-"
    return "all" if worth >= n else f"{worth} of {n}"


def _capacity(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per capacity result: streams served at each frame rate searched (">=" when the search cap passed)."""
    table = []
    for r in results:
        fps = r.get("capacity_fps") or []
        cells = []
        for f in fps:
            key = f"streams_at_{f:g}fps"
            capped = ">=" if r.get(key + "_capped") else ""
            cells.append((f"{f:g} FPS", f"{capped}{r.get(key, '-')}"))
        table.append({**r, "answers": cells})
    return table


def _fmt_x(value: Any) -> str:
    return f"{value:.2f}x" if isinstance(value, (int, float)) and math.isfinite(value) else "-"


def _fmt_db(value: Any) -> str:
    if value == "inf" or (isinstance(value, float) and math.isinf(value) and value > 0):
        return "identical"
    return f"{value:.1f} dB" if isinstance(value, (int, float)) and math.isfinite(value) else "-"


def _fmt_pp(value: Any) -> str:
    return f"{value:+.2f} pp" if isinstance(value, (int, float)) and math.isfinite(value) else "-"


def _fmt_delta_ms(value: Any) -> str:
    """A signed latency difference: "+0.120", "-12.5" (negative: the candidate is faster)."""
    if not _number(value):
        return "-"
    return f"{value:+.3f}" if abs(value) < 10 else f"{value:+.1f}"


def render_report(store: Store, run_id: str) -> str:
    """The report of one run as an HTML string."""
    if not (TEMPLATES / "templates" / "report.html.j2").is_file():
        raise ConfigError(
            f"report templates not found under {TEMPLATES}",
            fix="install edgebench from its source tree (pip install -e .) so reports/ is next to harness/",
        )
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(ms=_fmt_ms, ci=_fmt_ci, pct=_fmt_pct, x=_fmt_x, db=_fmt_db, pp=_fmt_pp, dms=_fmt_delta_ms)
    everything = store.results(run_id)
    rows = [r for r in everything if r.get("kind", "latency") == "latency"]
    robustness = [r for r in everything if r.get("kind") == "robustness"]
    interleaved = [r for r in everything if r.get("kind") == "interleaved"]
    capacity = [r for r in everything if r.get("kind") == "capacity"]
    counts: dict[str, int] = defaultdict(int)
    for r in everything:
        counts[r["status"]] += 1
    facts = store.device_facts(run_id)
    devices: dict[str, dict[str, Any]] = {}
    for r in everything:
        devices.setdefault(r["device"], {"platform": r["platform"], "facts": facts.get(r["device"], {})})
    # Markup: <style> is raw text, where autoescaping would turn the quotes of "Segoe UI" into a
    # literal &#34; and the browser would drop the whole font declaration.
    css = markupsafe.Markup((TEMPLATES / "templates" / "report.css").read_text(encoding="utf-8"))
    return env.get_template("templates/report.html.j2").render(
        run=store.run_info(run_id),
        rows=rows,
        costs=_precision_costs(rows),
        production=_production(rows),
        robustness=robustness,
        quality=_quality([*rows, *interleaved]),
        interleaved=_interleaved(interleaved),
        capacity=_capacity(capacity),
        counts=dict(counts),
        chart=_chart(rows),
        realtime=_realtime(rows),
        budgets=list(REALTIME_BUDGETS_MS),
        budget_ms=REALTIME_BUDGETS_MS,
        devices=devices,
        css=css,
        version=__version__,
    )


def _looks_like_html(path: Path) -> bool:
    """Whether an existing file is an HTML page (a report this or an earlier run wrote), by its first bytes."""
    try:
        with path.open("rb") as f:
            head = f.read(512)
    except OSError:
        return False
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return text.startswith((b"<!doctype html", b"<html"))


def check_report_target(out: Path, database: Path | None = None, *, flag: str = "--out") -> Path:
    """Refuse a report path that would destroy something: a directory, the results database, a non-HTML file.

    Front ends call this before any work, so a bad path costs nothing; ``write_report`` calls it again.
    """
    out = out.expanduser()
    if out.is_dir():
        raise ConfigError(
            f"report path {out} is a directory", key=flag, fix=f"pass a file name, e.g. {flag} {out / 'report.html'}"
        )
    if database is not None and (
        out.resolve() == database.resolve() or (out.exists() and database.exists() and out.samefile(database))
    ):
        raise ConfigError(
            f"report path {out} is the results database",
            key=flag,
            fix="write the report to another file, e.g. report.html",
        )
    if out.exists() and not out.is_file():
        raise ConfigError(
            f"report path {out} is not a regular file (a device or a socket)",
            key=flag,
            fix="pass a file name, e.g. report.html",
        )
    if out.is_file() and out.stat().st_size > 0 and not _looks_like_html(out):
        raise ConfigError(
            f"{out} exists and is not an HTML report; it is left as it is",
            key=flag,
            fix="pass a new file name or an earlier report to replace",
        )
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(
                    f"cannot write {out}: {parent} is a file, not a directory",
                    key=flag,
                    fix="pass a path in a directory",
                )
            break
    return out


def write_report(store: Store, run_id: str, out: Path, *, flag: str = "--out") -> Path:
    """Write the report atomically (a temporary file beside it, then a rename); return its path."""
    out = check_report_target(out, store.path, flag=flag)
    html = render_report(store, run_id)
    tmp = out.with_name(out.name + ".tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(html, encoding="utf-8")
        tmp.replace(out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(
            f"cannot write the report {out}: {exc.strerror}", key=flag, fix="pass a writable path"
        ) from None
    return out
