"""Render one self-contained HTML report of a run from the store, with jinja2 templates under reports/.

The file inlines its styles and draws its charts as inline SVG, so it opens offline, in a mail
attachment or a CI artifact viewer, with no network and no JavaScript.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import markupsafe

from .. import __version__
from ..errors import ConfigError
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


def _realtime(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model and device: the fastest valid variant and whether its P99 meets 30 and 60 FPS."""
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        if not r.get("valid") or r.get("p99_ms") is None:
            continue
        key = (r["model"], r["device"])
        if key not in best or r["p99_ms"] < best[key]["p99_ms"]:
            best[key] = r
    table = []
    for (model, device), r in sorted(best.items()):
        table.append(
            {
                "model": model,
                "device": device,
                "variant": f"{r['backend']} {r['precision']} {'x'.join(map(str, r['input_shape'][1:]))}",
                "p99": _fmt_ms(r["p99_ms"]),
                "unstable": bool(r.get("unstable")),
                "meets": {name: r["p99_ci_ms"][1] <= budget for name, budget in REALTIME_BUDGETS_MS.items()},
            }
        )
    return table


def _precision_costs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per variant: its speed-up over the FP32 variant of the same backend, size and device, and its parity."""
    fp32: dict[tuple[Any, ...], float] = {}
    for r in rows:
        if r["precision"] == "fp32" and isinstance(r.get("p50_ms"), (int, float)):
            fp32[(r["model"], r["device"], r["backend"], tuple(r["input_shape"]))] = r["p50_ms"]
    table = []
    for r in rows:
        if not isinstance(r.get("p50_ms"), (int, float)):
            continue
        base = fp32.get((r["model"], r["device"], r["backend"], tuple(r["input_shape"])))
        table.append(
            {
                **r,
                "speedup": (base / r["p50_ms"]) if base and r["p50_ms"] else None,
                "parity_failures": (r.get("failures") or {}).get("parity", []),
            }
        )
    return sorted(table, key=lambda r: (r["model"], r["device"], r["backend"], r["input_shape"], r["precision"]))


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
            }
        )
    return table


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
    env.filters.update(ms=_fmt_ms, ci=_fmt_ci, pct=_fmt_pct, x=_fmt_x, db=_fmt_db, pp=_fmt_pp)
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
        robustness=robustness,
        quality=_quality([*rows, *interleaved]),
        interleaved=interleaved,
        capacity=_capacity(capacity),
        counts=dict(counts),
        chart=_chart(rows),
        realtime=_realtime(rows),
        budgets=list(REALTIME_BUDGETS_MS),
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
