"""The runner's contract: job specs it rejects (naming the key), its own binomial ranks, its isolation."""

from __future__ import annotations

import ast
import copy
import io
import re
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import harness.agent
from harness.agent import PROTOCOL_VERSION
from harness.agent.loop import interval_ranks
from harness.agent.protocol import SpecError, parse_job
from harness.build.agent_bundle import agent_archive
from harness.measure.stats import order_statistic_interval

AGENT_DIR = Path(harness.agent.__file__).parent


def valid_spec() -> dict[str, Any]:
    return {
        "protocol": PROTOCOL_VERSION,
        "job_id": "tiny-cnn/onnxruntime-fp32/local",
        "runtime": "onnxruntime",
        "artifact": "/cache/abc.onnx",
        "input": {"name": "input", "shape": [1, 3, 16, 16], "mean": [0.5], "std": [0.25]},
        "latency": {"file": "/cache/lat.npz", "key": "latency"},
        "eval": [{"name": "clean", "file": "/cache/eval.npz", "key": "images"}],
        "outputs": "/cache/out/x.npz",
        "options": {"threads": 1},
        "warmup": {"window": 5, "max_iterations": 50},
        "stop": {"iterations": 100},
        "eval_batch": 4,
    }


def test_a_valid_spec_parses_into_typed_fields() -> None:
    job = parse_job(valid_spec())
    assert job.input.shape == (1, 3, 16, 16)
    assert job.input.mean == (0.5,)
    assert job.stop.iterations == 100
    assert job.warmup.window == 5
    assert [e.name for e in job.eval_sets] == ["clean"]
    assert job.eval_batch == 4


@pytest.mark.parametrize(
    ("path", "key_named"),
    [
        (("artifact",), "artifact"),
        (("job_id",), "job_id"),
        (("runtime",), "runtime"),
        (("input",), "input"),
        (("outputs",), "outputs"),
        (("latency",), "latency"),
        (("latency", "file"), "latency.file"),
        (("input", "name"), "input.name"),
        (("input", "shape"), "input.shape"),
        (("eval", 0, "file"), "eval[0].file"),
    ],
)
def test_a_missing_key_is_named(path: tuple[Any, ...], key_named: str) -> None:
    spec = valid_spec()
    parent: Any = spec
    for part in path[:-1]:
        parent = parent[part]
    del parent[path[-1]]
    with pytest.raises(SpecError, match=f"missing key {re.escape(key_named)}$"):
        parse_job(spec)


@pytest.mark.parametrize(
    ("where", "key", "key_named"),
    [
        ((), "warmpu", "warmpu"),
        (("stop",), "iteration", "stop.iteration"),
        (("warmup",), "windw", "warmup.windw"),
        (("input",), "colour", "input.colour"),
        (("latency",), "fiel", "latency.fiel"),
    ],
)
def test_an_unknown_key_is_named_with_the_known_ones(where: tuple[str, ...], key: str, key_named: str) -> None:
    spec = valid_spec()
    target: Any = spec
    for part in where:
        target = target[part]
    target[key] = 1
    with pytest.raises(SpecError, match=f"unknown key {re.escape(key_named)}; known: ") as info:
        parse_job(spec)
    # The list of known keys lets the reader spot the intended spelling.
    assert key not in str(info.value).split("known: ")[1].split(", ")


@pytest.mark.parametrize(
    ("path", "value", "key_named"),
    [
        (("stop", "iterations"), "ten", "stop.iterations"),
        (("warmup", "window"), 2.5, "warmup.window"),
        (("input", "shape"), [1, "three", 16, 16], "input.shape"),
        (("stop", "max_half_width"), True, "stop.max_half_width"),
    ],
)
def test_a_value_of_the_wrong_type_is_named(path: tuple[str, str], value: Any, key_named: str) -> None:
    spec = valid_spec()
    spec[path[0]][path[1]] = value
    with pytest.raises(SpecError, match=f"{re.escape(key_named)} must be "):
        parse_job(spec)


@pytest.mark.parametrize("version", [None, 0, PROTOCOL_VERSION + 1, "1"])
def test_another_protocol_version_is_refused_with_the_one_spoken(version: Any) -> None:
    spec = valid_spec()
    if version is None:
        del spec["protocol"]
    else:
        spec["protocol"] = version
    with pytest.raises(SpecError, match=rf"protocol {version!r} is not supported .*speaks {PROTOCOL_VERSION}"):
        parse_job(spec)


@pytest.mark.parametrize("bad", [[], "spec", 3, None])
def test_a_spec_that_is_not_an_object_is_refused(bad: Any) -> None:
    with pytest.raises(SpecError, match="must be a JSON object"):
        parse_job(bad)


def test_parse_does_not_modify_its_input() -> None:
    spec = valid_spec()
    before = copy.deepcopy(spec)
    parse_job(spec)
    assert spec == before


# --- the runner's own binomial ranks equal the host's (scipy) ones ------------------------------------

THRESHOLD_NS = [n for t in (6, 72, 368) for n in range(t - 3, t + 4)]
LARGE_NS = [1_000, 2_047, 10_000, 123_457, 1_000_000]


@pytest.mark.parametrize("q", [0.5, 0.9, 0.95, 0.99])
@pytest.mark.parametrize("n", [1, 2, 3, 5, *THRESHOLD_NS, 100, 500, *LARGE_NS])
def test_interval_ranks_match_the_host_reference(n: int, q: float) -> None:
    assert interval_ranks(n, q, 0.95) == order_statistic_interval(n, q, 0.95)


@pytest.mark.parametrize(("q", "threshold"), [(0.5, 6), (0.95, 72), (0.99, 368)])
def test_interval_ranks_exist_from_the_validity_threshold_on(q: float, threshold: int) -> None:
    assert interval_ranks(threshold - 1, q, 0.95) is None
    assert interval_ranks(threshold, q, 0.95) is not None


@given(
    n=st.integers(min_value=1, max_value=50_000),
    q=st.sampled_from([0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999]),
    confidence=st.sampled_from([0.9, 0.95, 0.99]),
)
def test_interval_ranks_match_the_host_reference_everywhere(n: int, q: float, confidence: float) -> None:
    assert interval_ranks(n, q, confidence) == order_statistic_interval(n, q, confidence)


# --- what crosses the wire imports nothing of harness --------------------------------------------------


def _imports(tree: ast.AST) -> list[tuple[str, int]]:
    """(module, level) of every import statement; level > 0 is a relative import."""
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, 0) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.append((node.module or "", node.level))
    return found


def test_no_runner_module_imports_harness() -> None:
    files = sorted(AGENT_DIR.rglob("*.py"))
    assert len(files) >= 5
    offenders = []
    for path in files:
        depth = len(path.relative_to(AGENT_DIR).parts) - 1  # how many levels below harness/agent
        for module, level in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if level == 0 and (module == "harness" or module.startswith("harness.")):
                offenders.append(f"{path.relative_to(AGENT_DIR)}: import {module}")
            # A relative import climbing above harness/agent reaches into harness too.
            if level > depth + 1:
                offenders.append(f"{path.relative_to(AGENT_DIR)}: from {'.' * level}{module}")
    assert not offenders, offenders


def test_the_bundle_holds_only_the_runner() -> None:
    with zipfile.ZipFile(io.BytesIO(agent_archive())) as zf:
        names = zf.namelist()
        sources = {name: zf.read(name).decode() for name in names}
    assert "__main__.py" in names
    runner_files = {p.relative_to(AGENT_DIR).as_posix() for p in AGENT_DIR.rglob("*.py")} - {"__main__.py"}
    packaged = {n.removeprefix("eb_agent/") for n in names if n != "__main__.py"}
    assert packaged == runner_files
    assert all(n.startswith("eb_agent/") for n in names if n != "__main__.py")
    for name, text in sources.items():
        for module, level in _imports(ast.parse(text)):
            assert level > 0 or not module.startswith("harness"), f"{name} imports {module}"


def test_the_bundle_is_deterministic(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same sources give the same bytes at any hour (the device cache re-uploads only on a change):
    every entry carries the fixed 2020-01-01 stamp, not the build's clock or the files' mtimes."""
    first = agent_archive()
    later = time.time() + 86_400 + 3_723  # a day, an hour, two minutes and three seconds on
    real_localtime = time.localtime

    def localtime(secs: float | None = None) -> time.struct_time:
        return real_localtime(later if secs is None else secs)

    monkeypatch.setattr(time, "time", lambda: later)
    monkeypatch.setattr(time, "localtime", localtime)
    assert agent_archive() == first
    with zipfile.ZipFile(io.BytesIO(first)) as zf:
        stamps = {info.filename: info.date_time for info in zf.infolist()}
    assert len(stamps) >= 5
    assert set(stamps.values()) == {(2020, 1, 1, 0, 0, 0)}, stamps
