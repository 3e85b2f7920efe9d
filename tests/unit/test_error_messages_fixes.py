"""Errors that used to stop at what went wrong now also say where and how to fix it."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.build.cache import ArtifactCache
from harness.build.export import load_factory, reference_onnx
from harness.catalog import ModelEntry, load_entry
from harness.cli.runs import check_measured
from harness.errors import ConfigError, EdgebenchError, TransportError
from harness.lab.health import check_device
from harness.lab.inventory import load_lab
from harness.store import Store
from harness.transport.local import LocalTransport
from tests.command_line import edgebench

FACTORY_MODULE = "edgebench_test_error_factories"


# ---- a failed group: the fix says where to read the errors and how to check the devices ------------
def test_a_failed_group_without_its_own_fix_gets_one() -> None:
    with pytest.raises(EdgebenchError) as info:
        check_measured("error", [], ["device 'jetson': runner crashed (exit 1)"], what="variant", failed="the search")
    assert info.value.one_line() == (
        "the search failed for 1 model x device(s); the first: device 'jetson': runner crashed (exit 1); "
        "fix: read each model x device's error in the table above, and check the devices: "
        "edgebench devices check --lab FILE"
    )


def test_a_failed_group_with_its_own_fix_keeps_that_one_alone() -> None:
    first = "options.tensorrt.max_batch: bad; fix: e.g. max_batch: 8"
    with pytest.raises(EdgebenchError) as info:
        check_measured("error", [], [first, "another"], what="variant", failed="the search")
    assert info.value.fix is None
    assert info.value.one_line().count("fix:") == 1


# ---- a catalog factory or ONNX file the build cannot use -------------------------------------------
@pytest.fixture
def factory_entry(
    tmp_path: Path, tiny_catalog: Path, tiny_catalog_yaml: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[str, str], ModelEntry]]:
    """A catalog entry whose source.factory is ``FACTORY_MODULE:<attr>``, a module written with ``code``."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def make(code: str, attr: str) -> ModelEntry:
        (tmp_path / f"{FACTORY_MODULE}.py").write_text(textwrap.dedent(code), encoding="utf-8")
        source = f'source: {{kind: torch, factory: "{FACTORY_MODULE}:{attr}"}}'
        entry = tiny_catalog / "tiny-cnn.yaml"
        entry.write_text(tiny_catalog_yaml().replace("source: {kind: onnx, path: tiny.onnx}", source))
        return load_entry(entry)

    yield make
    sys.modules.pop(FACTORY_MODULE, None)


def test_a_factory_that_is_not_callable_names_the_catalog_key_and_the_modules_functions(
    factory_entry: Callable[[str, str], ModelEntry],
) -> None:
    entry = factory_entry("build = 3\n\ndef tiny_model():\n    return None\n", "build")
    with pytest.raises(ConfigError) as info:
        load_factory(entry)
    assert info.value.one_line() == (
        f"{entry.catalog_file}: source.factory: {FACTORY_MODULE} has no callable 'build'; "
        "fix: use one of its functions: tiny_model"
    )


def test_a_factory_that_returns_no_module_names_the_catalog_key_and_the_fix(
    factory_entry: Callable[[str, str], ModelEntry], tmp_path: Path
) -> None:
    entry = factory_entry("def build():\n    return 3\n", "build")
    with pytest.raises(ConfigError) as info:
        reference_onnx(entry, cache=ArtifactCache(tmp_path / "artifacts"))
    assert info.value.one_line() == (
        f"{entry.catalog_file}: source.factory: {FACTORY_MODULE}:build returned int, not a torch.nn.Module; "
        "fix: point source.factory at a function that returns a torch.nn.Module (it is called with source.args)"
    )


def test_a_two_input_onnx_names_the_catalog_file_and_source_path(tiny_catalog: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    shape = [1, 3, 16, 16]
    graph = helper.make_graph(
        [helper.make_node("Add", ["input", "other"], ["logits"])],
        "two",
        [
            helper.make_tensor_value_info("input", TensorProto.FLOAT, shape),
            helper.make_tensor_value_info("other", TensorProto.FLOAT, shape),
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(tiny_catalog / "tiny.onnx"))
    entry = load_entry(tiny_catalog / "tiny-cnn.yaml")
    with pytest.raises(ConfigError) as info:
        reference_onnx(entry)
    assert info.value.one_line() == (
        f"{entry.catalog_file}: source.path: {entry.onnx_path()} has 2 inputs; "
        "edgebench benchmarks single-input vision models; "
        "fix: point source.path at a model with one image input (export it with the other inputs as constants)"
    )


# ---- a local device whose interpreter does not start -----------------------------------------------
def test_a_missing_interpreter_names_the_python_key_and_the_fix() -> None:
    with pytest.raises(TransportError) as info:
        LocalTransport("bench").run(["/nonexistent/bin/python3", "-V"], timeout_s=10)
    assert info.value.one_line() == (
        "device 'bench': cannot start '/nonexistent/bin/python3': No such file or directory; "
        "fix: set the device's python: in the lab file to an interpreter that exists and is executable, "
        f"or remove python: to use this one ({sys.executable})"
    )


def test_a_missing_other_program_says_to_install_it() -> None:
    with pytest.raises(TransportError) as info:
        LocalTransport("bench").run(["/nonexistent/bin/taskset", "-c", "0"], timeout_s=10)
    assert info.value.fix == "install taskset on this machine, or put its directory on PATH"


def test_devices_check_reports_the_python_fix_for_a_local_device(local_lab: Path) -> None:
    text = local_lab.read_text(encoding="utf-8").replace(f"python: {sys.executable}", "python: /nonexistent/python3")
    local_lab.write_text(text, encoding="utf-8")
    record = check_device(load_lab(local_lab).devices[0])
    assert record.state == "offline"
    assert "cannot start '/nonexistent/python3'" in record.reason
    assert "fix: set the device's python: in the lab file" in record.reason


# ---- a --db the store cannot use -------------------------------------------------------------------
def test_a_db_url_of_an_unknown_kind_says_what_to_pass() -> None:
    with pytest.raises(ConfigError) as info:
        Store("foo://host/db")
    assert info.value.key == "--db"
    assert info.value.fix == "pass --db a SQLite file path or a postgresql://user@host/db URL"


def test_the_command_prints_the_db_fix_on_one_line(tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    proc = edgebench("results", "--db", "foo://host/db", env=subprocess_env, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (
        "edgebench: error: --db: cannot use database foo://host/db: Can't load plugin: sqlalchemy.dialects:foo; "
        "fix: pass --db a SQLite file path or a postgresql://user@host/db URL"
    )
