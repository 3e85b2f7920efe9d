"""What a catalog gets wrong across its entries, or in names it refers to, is refused when it loads.

Before, these surfaced at job time or never: a model that was its own production recursed for ever, a
missing production model or data set failed only after the job had measured, a misspelt factory
function only at the build, and ``.yml`` files were skipped without a word.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.catalog import load_catalog, load_entry
from harness.errors import ConfigError
from harness.zoo.datasets import DATASETS
from tests.bad_input import line_number

MODELS = Path(__file__).resolve().parents[2] / "models"


def catalog_error(directory: Path, pattern: str = "*") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_catalog(directory, pattern)
    return info.value


@pytest.fixture
def two_entries(tiny_catalog: Path, tiny_catalog_yaml: Callable[..., str]) -> Callable[[str, str], Path]:
    """tiny-cnn and tiny-next, with text appended to each (a production: line, say)."""

    def write(cnn_extra: str, next_extra: str) -> Path:
        (tiny_catalog / "tiny-cnn.yaml").write_text(tiny_catalog_yaml() + cnn_extra, encoding="utf-8")
        (tiny_catalog / "tiny-next.yaml").write_text(tiny_catalog_yaml("tiny-next") + next_extra, encoding="utf-8")
        return tiny_catalog

    return write


def test_the_repository_catalog_loads_with_its_factories_and_data_sets() -> None:
    names = [entry.name for entry in load_catalog(MODELS)]
    assert names == ["digits-cnn", "mobilenetv2-style", "resnet18-style"]


def test_a_model_that_is_its_own_production_is_refused(two_entries: Callable[[str, str], Path]) -> None:
    catalog = two_entries("production: tiny-cnn\n", "")
    error = catalog_error(catalog)
    entry = catalog / "tiny-cnn.yaml"
    assert error.one_line() == (
        f"{entry}:{line_number(entry, 'production')}: production: a model cannot be its own production model "
        "(got 'tiny-cnn'); fix: name the model this one would replace (one of: tiny-next), or write production: null"
    )


def test_a_production_model_that_does_not_exist_is_refused_before_any_job(
    two_entries: Callable[[str, str], Path],
) -> None:
    catalog = two_entries("", "production: no-such-model\n")
    # Whatever --models picks: the catalog is checked whole.
    error = catalog_error(catalog, "tiny-cnn")
    entry = catalog / "tiny-next.yaml"
    assert (error.file, error.line, error.key) == (entry, line_number(entry, "production"), "production")
    assert "production model 'no-such-model' is not in the catalog" in error.message
    assert error.fix == "use one of: tiny-cnn, or write production: null"


def test_production_links_that_form_a_cycle_are_refused(two_entries: Callable[[str, str], Path]) -> None:
    catalog = two_entries("production: tiny-next\n", "production: tiny-cnn\n")
    error = catalog_error(catalog)
    assert error.key == "production" and error.file == catalog / "tiny-cnn.yaml"
    assert "production links form a cycle: tiny-cnn -> tiny-next -> tiny-cnn (got 'tiny-next')" in error.message
    assert "production: null" in (error.fix or "")


def test_a_production_model_evaluated_on_other_data_is_refused(two_entries: Callable[[str, str], Path]) -> None:
    catalog = two_entries("production: tiny-next\n", "")
    entry = catalog / "tiny-next.yaml"
    entry.write_text(entry.read_text().replace("seed: 1}", "seed: 7}"), encoding="utf-8")
    error = catalog_error(catalog)
    assert error.key == "production" and "'tiny-next' is not evaluated on the same data" in error.message
    assert error.fix == "give tiny-cnn and tiny-next the same eval: block and num_classes"


def test_a_sound_production_link_loads(two_entries: Callable[[str, str], Path]) -> None:
    catalog = two_entries("production: tiny-next\n", "")
    (candidate,) = load_catalog(catalog, "tiny-cnn")
    assert candidate.production == "tiny-next" and candidate.catalog_file == (catalog / "tiny-cnn.yaml").resolve()


@pytest.mark.parametrize("key", ["eval", "calibration"])
def test_an_unknown_data_set_names_the_key_and_lists_the_known_sets(
    tiny_catalog: Path, tiny_catalog_yaml: Callable[..., str], key: str
) -> None:
    entry = tiny_catalog / "tiny-cnn.yaml"
    text = tiny_catalog_yaml() + "calibration: {dataset: random-smooth, count: 8}\n"
    entry.write_text(
        text.replace(f"{key}: {{dataset: random-smooth", f"{key}: {{dataset: no-such-set"), encoding="utf-8"
    )
    with pytest.raises(ConfigError) as info:
        load_entry(entry)
    assert info.value.one_line() == (
        f"{entry}:{line_number(entry, key)}: {key}.dataset: unknown data set (got 'no-such-set'); "
        f"fix: use one of: {', '.join(sorted(DATASETS))} (harness/zoo/datasets.py)"
    )


def test_input_sizes_must_be_positive(tiny_catalog: Path, tiny_catalog_yaml: Callable[..., str]) -> None:
    entry = tiny_catalog / "tiny-cnn.yaml"
    entry.write_text(tiny_catalog_yaml() + "input_sizes: [16, 0, -3]\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_entry(entry)
    assert info.value.key == "input_sizes[1]" and "(got 0) (and 1 more)" in info.value.message
    assert info.value.fix == "use a value > 0"


@pytest.mark.parametrize(
    ("old", "new", "key", "fix"),
    [
        ("shape: [1, 3, 16, 16]", "shape: [3, 16, 16]", "input.shape", "write [batch, channels, height, width]"),
        ("std: [0.25]", "std: [0.25, 0]", "input.normalization.std[1]", "write the positive spread of each channel"),
        ("num_classes: 10", "num_classes: '10'", "num_classes", "write a whole number, without quotes"),
        ("pretrained: false", "pretrained: 'no'", "pretrained", "write true or false, without quotes"),
    ],
    ids=["shape", "std", "quoted-classes", "quoted-bool"],
)
def test_a_bad_input_spec_gets_a_fix_that_says_what_to_write(
    tiny_catalog: Path, tiny_catalog_yaml: Callable[..., str], old: str, new: str, key: str, fix: str
) -> None:
    entry = tiny_catalog / "tiny-cnn.yaml"
    entry.write_text(tiny_catalog_yaml().replace(old, new), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_entry(entry)
    assert info.value.key == key
    assert new in entry.read_text().splitlines()[(info.value.line or 0) - 1], "the line of the bad value"
    assert (info.value.fix or "").startswith(fix)
    assert "compare it with the example files" not in info.value.one_line()


def test_a_factory_function_that_does_not_exist_is_refused_listing_the_modules_functions(
    tiny_catalog: Path, tiny_catalog_yaml: Callable[..., str]
) -> None:
    entry = tiny_catalog / "tiny-cnn.yaml"
    source = 'source: {kind: torch, factory: "harness.zoo.mobilenet:no_such_fn"}'
    entry.write_text(tiny_catalog_yaml().replace("source: {kind: onnx, path: tiny.onnx}", source), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_entry(entry)
    text = info.value.one_line()
    assert text.startswith(f"{entry}:{line_number(entry, 'source')}: source.factory: ")
    assert "harness.zoo.mobilenet has no callable 'no_such_fn'; fix: use one of its functions: " in text
    assert "mobilenet_v2_style" in text


@pytest.mark.parametrize("module", ["harness.zoo.no_such_module", "no_such_package.models"])
def test_a_factory_module_that_does_not_exist_is_refused_at_load_not_at_build(
    tiny_catalog: Path, tiny_catalog_yaml: Callable[..., str], module: str
) -> None:
    entry = tiny_catalog / "tiny-cnn.yaml"
    source = f'source: {{kind: torch, factory: "{module}:build"}}'
    entry.write_text(tiny_catalog_yaml().replace("source: {kind: onnx, path: tiny.onnx}", source), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_entry(entry)
    assert info.value.one_line() == (
        f"{entry}:{line_number(entry, 'source')}: source.factory: no module named {module!r}; "
        "fix: install the package that provides it, or fix the module path"
    )


def test_checking_factories_imports_no_model_code(tmp_path: Path) -> None:
    """The factory modules import torch; loading the catalog reads them instead, and stays quick."""
    probe = (
        "import sys; from pathlib import Path; from harness.catalog import load_catalog; "
        f"load_catalog(Path({str(MODELS)!r})); print(sorted(m for m in ('torch', 'harness.zoo.mobilenet') "
        "if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"


def test_an_empty_catalog_directory_says_it_has_no_model_files(tmp_path: Path) -> None:
    error = catalog_error(tmp_path)
    assert error.one_line() == (
        f"{tmp_path}: the catalog directory has no .yaml model files; "
        "fix: pass --catalog with the directory of your models/<name>.yaml files (README: Adding a model)"
    )


def test_a_yml_file_is_named_instead_of_ignored(tiny_catalog: Path, tiny_catalog_yaml: Callable[..., str]) -> None:
    (tiny_catalog / "tiny-next.yml").write_text(tiny_catalog_yaml("tiny-next"), encoding="utf-8")
    error = catalog_error(tiny_catalog)
    assert error.one_line() == (
        f"{tiny_catalog / 'tiny-next.yml'}: catalog files end in .yaml: this one would be ignored; "
        "fix: rename it to tiny-next.yaml"
    )
    (tiny_catalog / "tiny-cnn.yaml").unlink()
    assert catalog_error(tiny_catalog).file == tiny_catalog / "tiny-next.yml", "also when no .yaml is left"


def test_a_production_budget_without_a_production_model_is_refused_at_its_line(
    tiny_catalog: Path, tiny_catalog_yaml: Callable[..., str]
) -> None:
    entry = tiny_catalog / "tiny-cnn.yaml"
    entry.write_text(tiny_catalog_yaml(budgets="budgets:\n  production_p99_ratio: 1.1\n"), encoding="utf-8")
    error = catalog_error(tiny_catalog)
    assert error.one_line() == (
        f"{entry}:{line_number(entry, 'production_p99_ratio')}: budgets.production_p99_ratio: "
        "set to 1.1, but production: names no model to compare with; "
        "fix: name the model this one would replace (production: <name>), or drop the budget"
    )


def _normalization_block(text: str, shape: str, layout: str, mean: str, std: str) -> str:
    """The tiny entry with another input shape and layout and its normalisation written key by key."""
    block = f"normalization:\n    mean: {mean}\n    std: {std}"
    return (
        text.replace("shape: [1, 3, 16, 16]", f"shape: {shape}")
        .replace("layout: NCHW", f"layout: {layout}")
        .replace("normalization: {mean: [0.5], std: [0.25]}", block)
    )


def test_a_grayscale_model_with_the_three_imagenet_means_is_refused_at_the_mean_line(
    tiny_catalog: Path, tiny_catalog_yaml: Callable[..., str]
) -> None:
    """Before, the host resized the means to the channel count and the device failed on a bare numpy reshape."""
    entry = tiny_catalog / "tiny-cnn.yaml"
    text = _normalization_block(tiny_catalog_yaml(), "[1, 1, 16, 16]", "NCHW", "[0.485, 0.456, 0.406]", "[0.25]")
    entry.write_text(text, encoding="utf-8")
    error = catalog_error(tiny_catalog)
    assert error.one_line() == (
        f"{entry}:{line_number(entry, 'mean:')}: input.normalization.mean: has 3 values [0.485, 0.456, 0.406] "
        "but the input has 1 channel (shape [1, 1, 16, 16], layout NCHW); "
        "fix: write one value; or correct input.shape and input.layout if the model takes 3 channels"
    )


@pytest.mark.parametrize(
    ("shape", "layout", "mean", "std", "bad"),
    [
        ("[1, 3, 16, 16]", "NCHW", "[0.5, 0.5]", "[0.25]", "mean"),
        ("[1, 3, 16, 16]", "NCHW", "[0.5]", "[0.2, 0.2, 0.2, 0.2]", "std"),
        ("[1, 16, 16, 1]", "NHWC", "[0.485, 0.456, 0.406]", "[0.25]", "mean"),
        ("[1, 16, 16, 3]", "NHWC", "[0.5]", "[0.229, 0.224]", "std"),
    ],
    ids=["two-means-for-rgb", "four-stds-for-rgb", "nhwc-gray-three-means", "nhwc-rgb-two-stds"],
)
def test_normalization_needs_one_value_or_one_per_channel_of_the_layout(
    tiny_catalog: Path, tiny_catalog_yaml: Callable[..., str], shape: str, layout: str, mean: str, std: str, bad: str
) -> None:
    entry = tiny_catalog / "tiny-cnn.yaml"
    entry.write_text(_normalization_block(tiny_catalog_yaml(), shape, layout, mean, std), encoding="utf-8")
    error = catalog_error(tiny_catalog)
    assert (error.file, error.line, error.key) == (entry, line_number(entry, f"{bad}:"), f"input.normalization.{bad}")
    channels = 1 if shape == "[1, 16, 16, 1]" else 3
    assert f"but the input has {channels} channel" in error.message and f"layout {layout})" in error.message
    if channels == 3:
        assert (error.fix or "").startswith("write one value (used for every channel) or 3; ")


@pytest.mark.parametrize(
    ("shape", "layout", "mean", "std"),
    [
        ("[1, 3, 16, 16]", "NCHW", "[0.485, 0.456, 0.406]", "[0.229, 0.224, 0.225]"),
        ("[1, 16, 16, 3]", "NHWC", "[0.485, 0.456, 0.406]", "[0.25]"),
        ("[1, 1, 16, 16]", "NCHW", "[0.5]", "[0.5]"),
    ],
    ids=["nchw-per-channel", "nhwc-per-channel-mean-one-std", "gray-one-value"],
)
def test_normalization_with_one_value_or_one_per_channel_loads(
    tiny_catalog: Path, tiny_catalog_yaml: Callable[..., str], shape: str, layout: str, mean: str, std: str
) -> None:
    entry = tiny_catalog / "tiny-cnn.yaml"
    entry.write_text(_normalization_block(tiny_catalog_yaml(), shape, layout, mean, std), encoding="utf-8")
    (loaded,) = load_catalog(tiny_catalog)
    assert list(loaded.input.normalization.mean) == [float(v) for v in mean.strip("[]").split(",")]
