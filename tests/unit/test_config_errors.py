"""Bad catalog and inventory files: one error naming file, line, key path and a fix; exit 2 from the CLI."""

from __future__ import annotations

import subprocess
import textwrap
from collections.abc import Callable
from pathlib import Path
from tempfile import TemporaryDirectory

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.catalog import load_catalog, load_entry
from harness.config import read_yaml
from harness.errors import ConfigError
from harness.lab.inventory import load_lab
from tests.bad_input import line_number
from tests.command_line import edgebench_exe

# --- catalog -------------------------------------------------------------------------------------------


def write_entry(directory: Path, name: str, text: str) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def entry_error(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_entry(path)
    return info.value


def assert_points_at(error: ConfigError, path: Path, line: int, key: str) -> None:
    text = error.one_line()
    assert text.startswith(f"{path}:{line}: {key}: "), text
    assert error.file == path and error.line == line and error.key == key
    assert "; fix: " in text
    assert error.fix, "every configuration error says how to fix it"
    assert "\n" not in text


def test_unknown_catalog_key(tiny_catalog: Path, tiny_catalog_yaml: Callable[..., str]) -> None:
    text = tiny_catalog_yaml().replace("num_classes:", "num_clases: 10\nnum_classes:")
    path = write_entry(tiny_catalog, "tiny-cnn", text)
    error = entry_error(path)
    assert_points_at(error, path, line_number(path, "num_clases"), "num_clases")
    assert "unknown key" in error.message
    assert "spelling" in (error.fix or "")


def test_unknown_nested_catalog_key(tiny_catalog: Path, tiny_catalog_yaml: Callable[..., str]) -> None:
    text = tiny_catalog_yaml().replace("  layout: NCHW", "  layuot: NCHW")
    path = write_entry(tiny_catalog, "tiny-cnn", text)
    assert_points_at(entry_error(path), path, line_number(path, "layuot"), "input.layuot")


def test_wrong_type_quotes_the_bad_value(tiny_catalog: Path, tiny_catalog_yaml: Callable[..., str]) -> None:
    text = tiny_catalog_yaml().replace("num_classes: 10", "num_classes: ten")
    path = write_entry(tiny_catalog, "tiny-cnn", text)
    error = entry_error(path)
    assert_points_at(error, path, line_number(path, "num_classes"), "num_classes")
    assert "'ten'" in error.message
    assert "whole number" in (error.fix or "")


def test_wrong_type_inside_a_list(tiny_catalog: Path, tiny_catalog_yaml: Callable[..., str]) -> None:
    text = tiny_catalog_yaml().replace("shape: [1, 3, 16, 16]", "shape: [1, 3, sixteen, 16]")
    path = write_entry(tiny_catalog, "tiny-cnn", text)
    error = entry_error(path)
    assert error.key == "input.shape[2]"
    assert error.line == line_number(path, "shape:")
    assert "'sixteen'" in error.message


def test_value_out_of_range_says_the_limit(tiny_catalog: Path, tiny_catalog_yaml: Callable[..., str]) -> None:
    text = tiny_catalog_yaml(budgets="budgets:\n  p99_ms: -5\n")
    path = write_entry(tiny_catalog, "tiny-cnn", text)
    error = entry_error(path)
    assert_points_at(error, path, line_number(path, "p99_ms"), "budgets.p99_ms")
    assert error.fix == "use a value > 0"


def test_missing_field(tiny_catalog: Path, tiny_catalog_yaml: Callable[..., str]) -> None:
    text = tiny_catalog_yaml().replace("pretrained: false\n", "")
    path = write_entry(tiny_catalog, "tiny-cnn", text)
    error = entry_error(path)
    # A missing key has no line of its own: the error points at the mapping that lacks it.
    assert_points_at(error, path, 1, "pretrained")
    assert "required" in error.message.lower()
    assert error.fix == "add this key"


def test_onnx_source_without_path(tiny_catalog: Path, tiny_catalog_yaml: Callable[..., str]) -> None:
    text = tiny_catalog_yaml().replace("source: {kind: onnx, path: tiny.onnx}", "source: {kind: onnx}")
    path = write_entry(tiny_catalog, "tiny-cnn", text)
    error = entry_error(path)
    assert_points_at(error, path, line_number(path, "source:"), "source.path")
    assert "needs a path" in error.message


def test_file_name_must_match_the_model_name(tiny_catalog: Path, tiny_catalog_yaml: Callable[..., str]) -> None:
    path = write_entry(tiny_catalog, "tiny", tiny_catalog_yaml())
    (tiny_catalog / "tiny-cnn.yaml").unlink()
    error = entry_error(path)
    assert_points_at(error, path, line_number(path, "name:"), "name")
    assert "'tiny-cnn'" in error.message
    assert "rename the file to tiny-cnn.yaml" in (error.fix or "")


def test_missing_onnx_file_names_the_path(tiny_catalog: Path) -> None:
    (tiny_catalog / "tiny.onnx").unlink()
    path = tiny_catalog / "tiny-cnn.yaml"
    error = entry_error(path)
    assert_points_at(error, path, line_number(path, "source:"), "source.path")
    assert str(tiny_catalog / "tiny.onnx") in error.message


def test_invalid_yaml_gives_the_line(tiny_catalog: Path) -> None:
    path = write_entry(tiny_catalog, "tiny-cnn", "name: tiny-cnn\ninput: [1, 2\nfoo: bar\n")
    error = entry_error(path)
    assert error.file == path and error.line is not None
    assert "not valid YAML" in error.message


def test_a_glob_that_matches_nothing_lists_the_models(tiny_catalog: Path) -> None:
    with pytest.raises(ConfigError, match=r"no model matches --models 'resnet\*'.*use a glob over: tiny-cnn"):
        load_catalog(tiny_catalog, "resnet*")


# --- inventory -----------------------------------------------------------------------------------------

DUPLICATE = """\
schema_version: 1
name: lab
devices:
  - name: nuc
    platform: intel-nuc
    host: 10.0.0.2
  - name: jetson
    platform: jetson-orin
    host: 10.0.0.3
  - name: nuc
    platform: intel-nuc
    host: 10.0.0.4
"""

NO_HOST = """\
schema_version: 1
devices:
  - name: local
    platform: generic-linux
    transport: local
  - name: coral
    platform: coral-devboard
    transport: ssh
    user: mendel
"""

PORT_WORD = """\
schema_version: 1
devices:
  - name: nuc
    platform: intel-nuc
    host: nuc.lab
    port: twenty-two
"""

PORT_RANGE = PORT_WORD.replace("twenty-two", "70000")

BAD_PLATFORM = PORT_WORD.replace("intel-nuc", "intel-nucc").replace("twenty-two", "22")


def lab_error(tmp_path: Path, text: str) -> tuple[Path, ConfigError]:
    path = tmp_path / "lab.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_lab(path)
    return path, info.value


def test_duplicate_device_points_at_the_second_one(tmp_path: Path) -> None:
    path, error = lab_error(tmp_path, DUPLICATE)
    assert_points_at(error, path, 10, "devices[2].name")
    assert "'nuc' appears twice" in error.message


def test_ssh_device_without_host(tmp_path: Path) -> None:
    path, error = lab_error(tmp_path, NO_HOST)
    # No host line exists: the error points at the device that lacks it.
    assert_points_at(error, path, 6, "devices[1].host")
    assert "ssh device needs a host" in error.message
    assert "add host:" in (error.fix or "")


def test_port_that_is_not_a_number(tmp_path: Path) -> None:
    path, error = lab_error(tmp_path, PORT_WORD)
    assert_points_at(error, path, 6, "devices[0].port")
    assert "'twenty-two'" in error.message
    # The tuple of devices failing as a consequence is not reported as a second problem.
    assert "more" not in error.message


def test_port_out_of_range_says_the_limit(tmp_path: Path) -> None:
    path, error = lab_error(tmp_path, PORT_RANGE)
    assert_points_at(error, path, 6, "devices[0].port")
    assert "70000" in error.message
    assert error.fix == "use a value <= 65535"


def test_unknown_platform_lists_the_known_ones(tmp_path: Path) -> None:
    path, error = lab_error(tmp_path, BAD_PLATFORM)
    assert_points_at(error, path, 4, "devices[0].platform")
    assert "'intel-nucc'" in error.message
    assert "'intel-nuc'" in (error.fix or "") and "'generic-linux'" in (error.fix or "")


def test_empty_lab_file(tmp_path: Path) -> None:
    path, error = lab_error(tmp_path, "")
    assert error.file == path and "empty" in error.message


def test_missing_lab_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found; fix: check the path"):
        load_lab(tmp_path / "nowhere.yaml")


# --- the YAML text itself --------------------------------------------------------------------------------

TWICE_AT_TOP = DUPLICATE.replace("name: lab\n", "name: lab\nname: other-lab\n")
TWICE_IN_A_DEVICE = DUPLICATE.replace("    host: 10.0.0.3\n", "    host: 10.0.0.3\n    threads: 4\n    threads: 2\n")
NOT_UTF8 = "schema_version: 1\n# caf\u00e9 lab\n".encode("latin-1") + PORT_WORD.encode()
NUL_BYTE = PORT_WORD.replace("    host: nuc.lab", "    host: nuc.lab\x00").encode()


@pytest.mark.parametrize(
    ("text", "line", "key", "first"),
    [(TWICE_AT_TOP, 3, "name", 2), (TWICE_IN_A_DEVICE, 11, "devices[1].threads", 10)],
    ids=["lab-name", "device-threads"],
)
def test_a_key_written_twice_in_a_lab_names_both_lines(
    tmp_path: Path, text: str, line: int, key: str, first: int
) -> None:
    path, error = lab_error(tmp_path, text)
    assert_points_at(error, path, line, key)
    assert f"written twice (first on line {first})" in error.message
    assert error.fix == f"keep one {key.rsplit('.', 1)[-1]}: line and delete the other"


def test_a_key_written_twice_in_a_catalog_entry_names_both_lines(
    tiny_catalog: Path, tiny_catalog_yaml: Callable[..., str]
) -> None:
    path = write_entry(
        tiny_catalog, "tiny-cnn", tiny_catalog_yaml().replace("num_classes: 10", "num_classes: 10\nnum_classes: 1000")
    )
    error = entry_error(path)
    first = line_number(path, "num_classes")
    assert_points_at(error, path, first + 1, "num_classes")
    assert f"(first on line {first})" in error.message


def test_an_anchor_merge_may_override_a_key_it_brings(tmp_path: Path) -> None:
    path = tmp_path / "lab.yaml"
    path.write_text(
        "schema_version: 1\ndevices:\n  - &nuc {name: nuc-1, platform: intel-nuc, host: a}\n"
        "  - <<: *nuc\n    name: nuc-2\n",
        encoding="utf-8",
    )
    assert [d.name for d in load_lab(path).devices] == ["nuc-1", "nuc-2"]


@given(
    st.lists(st.from_regex(r"[a-z][a-z_]{0,8}", fullmatch=True), min_size=1, max_size=8, unique=True),
    st.data(),
)
def test_any_repeated_key_is_refused_at_its_second_line(keys: list[str], data: st.DataObject) -> None:
    again = data.draw(st.integers(0, len(keys) - 1))
    at = data.draw(st.integers(again + 1, len(keys)))
    lines = [f"{k}: {i}" for i, k in enumerate(keys)]
    lines.insert(at, f"{keys[again]}: again")
    with TemporaryDirectory() as tmp:
        path = Path(tmp) / "any.yaml"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        with pytest.raises(ConfigError) as info:
            read_yaml(path)
    assert (info.value.line, info.value.key) == (at + 1, keys[again])
    assert f"first on line {again + 1}" in info.value.message


def test_a_file_that_is_not_utf8_names_the_line_and_says_to_save_it_as_utf8(tmp_path: Path) -> None:
    path = tmp_path / "lab.yaml"
    path.write_bytes(NOT_UTF8)
    with pytest.raises(ConfigError) as info:
        load_lab(path)
    assert info.value.one_line() == (
        f"{path}:2: not UTF-8 text: byte 0xe9 cannot be decoded; "
        "fix: save the file as UTF-8 (it may be binary, or in another encoding such as Latin-1 or UTF-16)"
    )


def test_a_nul_byte_names_the_line_and_the_character(tmp_path: Path, tiny_catalog: Path) -> None:
    path = tmp_path / "lab.yaml"
    path.write_bytes(NUL_BYTE)
    with pytest.raises(ConfigError) as info:
        load_lab(path)
    assert info.value.one_line().startswith(f"{path}:5: not a YAML text file: character U+0000 is not allowed; fix: ")
    entry = tiny_catalog / "tiny-cnn.yaml"
    entry.write_bytes(b"\x00" + entry.read_bytes())
    assert "character U+0000" in entry_error(entry).one_line()


@pytest.mark.parametrize(
    ("where", "key"), [("lab", "lab_file"), ("catalog", "catalog_file")], ids=["lab_file", "catalog_file"]
)
def test_bookkeeping_fields_are_unknown_keys(
    tmp_path: Path, tiny_catalog: Path, tiny_catalog_yaml: Callable[..., str], where: str, key: str
) -> None:
    if where == "lab":
        path, error = lab_error(tmp_path, PORT_WORD.replace("twenty-two", "22") + f"{key}: /etc/other.yaml\n")
    else:
        path = write_entry(tiny_catalog, "tiny-cnn", tiny_catalog_yaml() + f"{key}: /etc/other.yaml\n")
        error = entry_error(path)
    assert_points_at(error, path, line_number(path, key), key)
    assert error.one_line().endswith(
        f"{key}: unknown key; fix: remove it, or check its spelling against the documented keys"
    )


# --- through the command line ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (DUPLICATE, ":10: devices[2].name: device name 'nuc' appears twice"),
        (NO_HOST, ":6: devices[1].host: an ssh device needs a host"),
        (PORT_WORD, ":6: devices[0].port: "),
        (TWICE_IN_A_DEVICE, ":11: devices[1].threads: key written twice (first on line 10)"),
        (NOT_UTF8, ":2: not UTF-8 text: byte 0xe9"),
        (NUL_BYTE, ":5: not a YAML text file: character U+0000"),
        (None, "file not found"),
    ],
    ids=["duplicate", "no-host", "bad-port", "key-twice", "not-utf8", "nul-byte", "missing-file"],
)
def test_cli_reports_a_bad_lab_in_one_line_with_exit_2(
    tmp_path: Path, tiny_catalog: Path, subprocess_env: dict[str, str], text: str | bytes | None, expected: str
) -> None:
    lab = tmp_path / "bad-lab.yaml"
    if isinstance(text, bytes):
        lab.write_bytes(text)
    elif text is not None:
        lab.write_text(text, encoding="utf-8")
    proc = subprocess.run(
        [edgebench_exe(), "run", "--lab", str(lab), "--catalog", str(tiny_catalog), "--db", str(tmp_path / "db")],
        capture_output=True,
        text=True,
        env=subprocess_env,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"edgebench: error: {lab}"), lines[0]
    assert expected in lines[0]
    assert "; fix: " in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "db").exists(), "nothing is written before the input is valid"


def test_cli_reports_a_bad_catalog_entry_in_one_line_with_exit_2(
    tmp_path: Path,
    tiny_catalog: Path,
    local_lab: Path,
    subprocess_env: dict[str, str],
    tiny_catalog_yaml: Callable[..., str],
) -> None:
    entry = tiny_catalog / "tiny-cnn.yaml"
    entry.write_text(tiny_catalog_yaml().replace("num_classes: 10", "num_classes: ten"), encoding="utf-8")
    proc = subprocess.run(
        [edgebench_exe(), "run", "--lab", str(local_lab), "--catalog", str(tiny_catalog)],
        capture_output=True,
        text=True,
        env=subprocess_env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"edgebench: error: {entry}:{line_number(entry, 'num_classes')}: num_classes: "
        "Input should be a valid integer (got 'ten'); "
        "fix: write a whole number, without quotes"
    ]


def test_debug_shows_the_traceback(tmp_path: Path, tiny_catalog: Path, subprocess_env: dict[str, str]) -> None:
    lab = tmp_path / "bad-lab.yaml"
    lab.write_text(textwrap.dedent(DUPLICATE), encoding="utf-8")
    proc = subprocess.run(
        [edgebench_exe(), "run", "--lab", str(lab), "--catalog", str(tiny_catalog), "--debug"],
        capture_output=True,
        text=True,
        env=subprocess_env,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "ConfigError" in proc.stderr


@pytest.mark.parametrize("bad", ["lab", "catalog"])
def test_pytest_reports_an_unreadable_file_as_a_usage_error(
    pytester: pytest.Pytester, tiny_catalog: Path, local_lab: Path, tmp_path: Path, bad: str
) -> None:
    """Before, a file that was not UTF-8 or held a NUL byte ended the session in an INTERNALERROR."""
    pytester.makepyfile(test_suite="def test_nothing() -> None:\n    pass\n")
    broken = local_lab if bad == "lab" else tiny_catalog / "tiny-cnn.yaml"
    broken.write_bytes(broken.read_bytes().replace(b"name:", b"\xffname:", 1))
    out = tmp_path / "out"
    result = pytester.runpytest(
        "-p", "no:benchmark", "--lab", str(local_lab), "--catalog", str(tiny_catalog), "--db", str(out / "db.sqlite")
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*edgebench: {broken}:*: not UTF-8 text: byte 0xff cannot be decoded; fix: *"])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    assert not out.exists(), "nothing is written before the input is valid"
