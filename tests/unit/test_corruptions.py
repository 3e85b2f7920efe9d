"""ImageNet-C corruptions: shape, range and seeds hold for every corruption, severity makes it harsher.

The scenes are smooth synthetic images with gradients and hard edges (a disc and a box), 64 x 64 RGB and
32 x 32 gray, small enough that the whole 19 x 5 grid runs in seconds on one core.
"""

from __future__ import annotations

import itertools

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from harness.errors import UnknownNameError
from harness.measure.corruptions import (
    ALL_CORRUPTIONS,
    CORRUPTIONS,
    EXTRA_CORRUPTIONS,
    MIN_SIDE,
    SEVERITIES,
    corrupt,
    corrupt_batch,
)

Image = npt.NDArray[np.float32]

# Corruptions that draw nothing at random: the seed must not change them.
DETERMINISTIC = frozenset(
    {
        "defocus_blur",
        "zoom_blur",
        "brightness",
        "contrast",
        "pixelate",
        "jpeg_compression",
        "gaussian_blur",
        "saturate",
    }
)

# Consecutive severities whose published parameters are not ordered by distance from the clean image
# (module docstring, "Severity order"): the largest relative RMSE drop allowed from one to the next.
ALLOWED_DROP = {"snow": 0.05, "pixelate": 0.05}
# Saturate desaturates at severities 1-2 and over-saturates at 3-5: 2 -> 3 changes direction, not size.
UNORDERED_STEPS = {("saturate", 2)}


def scene(height: int, width: int, *, rgb: bool) -> Image:
    """A smooth, natural-ish test image: colour gradients, a bright disc and a dark box, edges softened."""
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    img = np.stack([0.2 + 0.6 * xx, 0.3 + 0.4 * np.sin(3 * yy + 1) ** 2, 0.5 + 0.3 * np.cos(4 * xx * yy)], axis=2)
    img[(yy - 0.55) ** 2 + (xx - 0.4) ** 2 < 0.06] = (0.9, 0.8, 0.2)
    img[(yy > 0.15) & (yy < 0.35) & (xx > 0.6) & (xx < 0.9)] = (0.1, 0.15, 0.5)
    img = np.clip(ndimage.gaussian_filter(img, (0.6, 0.6, 0)), 0, 1)
    if not rgb:
        img = img @ np.array([0.299, 0.587, 0.114])
    out: Image = np.asarray(img, dtype=np.float32)
    out.flags.writeable = False  # a corruption that wrote into its input would fail loudly
    return out


RGB64 = scene(64, 64, rgb=True)
GRAY32 = scene(32, 32, rgb=False)
SCENES = {"rgb64": RGB64, "gray32": GRAY32}


def rmse(a: npt.NDArray[np.floating], b: npt.NDArray[np.floating]) -> float:
    return float(np.sqrt(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


def ssim(a: npt.NDArray[np.floating], b: npt.NDArray[np.floating]) -> float:
    """Mean SSIM (Wang et al. 2004), Gaussian window sigma 1.5, per channel."""
    x = np.atleast_3d(a).astype(np.float64)
    y = np.atleast_3d(b).astype(np.float64)

    def window(z: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        out: npt.NDArray[np.float64] = ndimage.gaussian_filter(z, (1.5, 1.5, 0), truncate=3.5)
        return out

    mx, my = window(x), window(y)
    vx, vy, cxy = window(x * x) - mx**2, window(y * y) - my**2, window(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    index = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(index.mean())


def structure_loss(a: npt.NDArray[np.floating], b: npt.NDArray[np.floating]) -> float:
    return 1.0 - ssim(a, b)


# How far a corrupted image is from the clean one. Frost's published blend swaps image for frost at a
# roughly constant pixel distance (RMSE stays within +-8% over severities 1-5); what grows is how much
# of the image's structure the frost hides, which SSIM measures.
MEASURE = {"frost": structure_loss}


def mean_distance(image: Image, name: str, severity: int, seeds: range) -> float:
    measure = MEASURE.get(name, rmse)
    return float(np.mean([measure(corrupt(image, name, severity, seed), image) for seed in seeds]))


def saturation(rgb: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    v = rgb.max(axis=2).astype(np.float64)
    result: npt.NDArray[np.float64] = np.divide(v - rgb.min(axis=2), v, out=np.zeros_like(v), where=v > 0)
    return result


# --- the names other code relies on ---------------------------------------------------------------------


def test_names_follow_the_benchmark_order() -> None:
    assert CORRUPTIONS == (
        "gaussian_noise",
        "shot_noise",
        "impulse_noise",
        "defocus_blur",
        "glass_blur",
        "motion_blur",
        "zoom_blur",
        "snow",
        "frost",
        "fog",
        "brightness",
        "contrast",
        "elastic_transform",
        "pixelate",
        "jpeg_compression",
    )
    assert EXTRA_CORRUPTIONS == ("speckle_noise", "gaussian_blur", "spatter", "saturate")
    assert ALL_CORRUPTIONS == CORRUPTIONS + EXTRA_CORRUPTIONS
    assert SEVERITIES == (1, 2, 3, 4, 5)


# --- every corruption, every severity ---------------------------------------------------------------------


@pytest.mark.parametrize("severity", SEVERITIES)
@pytest.mark.parametrize("name", ALL_CORRUPTIONS)
@pytest.mark.parametrize("image", SCENES.values(), ids=SCENES.keys())
def test_keeps_shape_dtype_and_range_and_is_reproducible(image: Image, name: str, severity: int) -> None:
    first = corrupt(image, name, severity, seed=7)
    assert first.shape == image.shape
    assert first.dtype == np.float32
    assert np.all(np.isfinite(first))
    assert first.min() >= 0.0 and first.max() <= 1.0
    assert np.array_equal(first, corrupt(image, name, severity, seed=7))
    other_seed = corrupt(image, name, severity, seed=8)
    if name in DETERMINISTIC:
        assert np.array_equal(first, other_seed)
    else:
        assert not np.array_equal(first, other_seed)


@pytest.mark.parametrize("name", ALL_CORRUPTIONS)
@pytest.mark.parametrize("image", SCENES.values(), ids=SCENES.keys())
def test_harsher_with_severity(image: Image, name: str) -> None:
    seeds = range(1) if name in DETERMINISTIC else range(3)
    distance = [mean_distance(image, name, severity, seeds) for severity in SEVERITIES]
    if name == "saturate" and image.ndim == 2:
        assert distance == [0.0] * 5  # gray has no saturation to change
        return
    assert distance[0] > 0.002, f"{name} severity 1 leaves the image as it was: {distance}"
    allowed = ALLOWED_DROP.get(name, 0.0)
    for severity, (lower, higher) in enumerate(itertools.pairwise(distance), start=1):
        if (name, severity) in UNORDERED_STEPS:
            continue
        assert higher >= lower * (1 - allowed), (
            f"{name} severity {severity + 1} is closer to the clean image than {severity}: {distance}"
        )
    assert distance[-1] > distance[0]


def test_saturate_drains_colour_then_pushes_it() -> None:
    # Published: saturation x 0.3 and x 0.1 at severities 1-2, then x 2, x 5 + 0.1, x 20 + 0.2 at 3-5.
    clean = float(saturation(RGB64).mean())
    mean_sat = [float(saturation(corrupt(RGB64, "saturate", s, 0)).mean()) for s in SEVERITIES]
    assert mean_sat[1] < mean_sat[0] < clean < mean_sat[2] < mean_sat[3] < mean_sat[4], (clean, mean_sat)


def test_saturate_is_the_identity_on_grayscale() -> None:
    for severity in SEVERITIES:
        assert np.array_equal(corrupt(GRAY32, "saturate", severity, 0), GRAY32)


@pytest.mark.parametrize("name", ALL_CORRUPTIONS)
def test_gray_layouts_hw_and_hw1_give_the_same_pixels(name: str) -> None:
    flat = corrupt(GRAY32, name, 3, seed=11)
    channel = corrupt(GRAY32[:, :, None], name, 3, seed=11)
    assert channel.shape == (32, 32, 1)
    np.testing.assert_array_equal(flat, channel[:, :, 0])


@pytest.mark.parametrize("name", ["gaussian_blur", "defocus_blur", "motion_blur", "zoom_blur"])
def test_blur_looks_the_same_on_a_larger_copy_of_the_image(name: str) -> None:
    # Pixel lengths scale with the image side: blurring a 224 px scene and halving it should look like
    # blurring the 112 px scene, as far as the distance from the clean image goes.
    large, small = scene(224, 224, rgb=True), scene(112, 112, rgb=True)

    def halve(a: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
        result: npt.NDArray[np.float64] = a.astype(np.float64).reshape(112, 2, 112, 2, 3).mean(axis=(1, 3))
        return result

    for severity in (2, 5):
        on_small = rmse(corrupt(small, name, severity, 0), small)
        on_large = rmse(halve(corrupt(large, name, severity, 0)), halve(large))
        assert 0.75 < on_small / on_large < 1.33, (severity, on_small, on_large)


def test_jpeg_compression_leaves_8x8_blocks() -> None:
    out = corrupt(RGB64, "jpeg_compression", 5, 0).astype(np.float64).mean(axis=2)
    jumps = np.abs(np.diff(out, axis=1))
    at_block_edges = jumps[:, 7::8].mean()
    inside_blocks = np.delete(jumps, np.s_[7::8], axis=1).mean()
    assert at_block_edges > 2 * inside_blocks
    assert np.allclose(out * 255 * 3, np.rint(out * 255 * 3), atol=1e-3)  # 8-bit samples


# --- any size, gray or colour ---------------------------------------------------------------------------


@settings(deadline=None)
@given(
    height=st.integers(MIN_SIDE, 96),
    width=st.integers(MIN_SIDE, 96),
    layout=st.sampled_from(["hw", "hw1", "hw3"]),
    name=st.sampled_from(ALL_CORRUPTIONS),
    severity=st.sampled_from(SEVERITIES),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_size_and_layout(height: int, width: int, layout: str, name: str, severity: int, seed: int) -> None:
    shape = {"hw": (height, width), "hw1": (height, width, 1), "hw3": (height, width, 3)}[layout]
    image = np.random.default_rng(seed).random(shape, dtype=np.float32)
    out = corrupt(image, name, severity, seed)
    assert out.shape == image.shape
    assert out.dtype == np.float32
    assert np.all(np.isfinite(out)) and out.min() >= 0.0 and out.max() <= 1.0


# --- batches --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["nhw", "nhwc"])
def test_batch_gives_each_image_its_own_reproducible_draw(layout: str) -> None:
    base = GRAY32 if layout == "nhw" else RGB64
    batch = np.stack([base] * 4)
    out = corrupt_batch(batch, "gaussian_noise", 3, seed=5)
    assert out.shape == batch.shape and out.dtype == np.float32
    assert not np.array_equal(out[0], out[1])  # same picture, different noise
    np.testing.assert_array_equal(out, corrupt_batch(batch, "gaussian_noise", 3, seed=5))
    np.testing.assert_array_equal(out[:2], corrupt_batch(batch[:2], "gaussian_noise", 3, seed=5))
    assert not np.array_equal(out, corrupt_batch(batch, "gaussian_noise", 3, seed=6))


def test_batch_of_a_deterministic_corruption_matches_single_images() -> None:
    batch = np.stack([RGB64, RGB64[::-1]])
    out = corrupt_batch(batch, "jpeg_compression", 4, seed=0)
    for image, result in zip(batch, out, strict=True):
        np.testing.assert_array_equal(result, corrupt(image, "jpeg_compression", 4, seed=0))


def test_empty_batch() -> None:
    out = corrupt_batch(np.zeros((0, 32, 32, 3), np.float32), "fog", 1, seed=0)
    assert out.shape == (0, 32, 32, 3) and out.dtype == np.float32


# --- bad input says what is wrong -----------------------------------------------------------------------


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(UnknownNameError, match="unknown corruption 'gaussian_nosie'") as err:
        corrupt(RGB64, "gaussian_nosie", 1, 0)
    assert "gaussian_noise" in str(err.value) and "saturate" in str(err.value)
    with pytest.raises(UnknownNameError):
        corrupt_batch(np.stack([RGB64]), "frosty", 1, 0)


@pytest.mark.parametrize("severity", [0, 6, -1, 2.5, True, "3"])
def test_bad_severity(severity: object) -> None:
    with pytest.raises(ValueError, match=r"severity.*1\.\.5"):
        corrupt(RGB64, "fog", severity, 0)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", [-1, 1.5, "0"])
def test_bad_seed(seed: object) -> None:
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        corrupt(RGB64, "fog", 1, seed)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((64,), "expected \\(H, W\\) or \\(H, W, C\\)"),
        ((2, 64, 64, 3), "expected \\(H, W\\) or \\(H, W, C\\)"),
        ((64, 64, 2), "2 channels; expected 1 or 3"),
        ((64, 64, 4), "4 channels; expected 1 or 3"),
        ((31, 64), "must be >= 32"),
        ((64, 20, 3), "must be >= 32"),
    ],
)
def test_bad_image_shape(shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        corrupt(np.zeros(shape, np.float32), "contrast", 1, 0)


@pytest.mark.parametrize("shape", [(64, 64), (3, 64, 64, 3, 1), (2, 64, 64, 2), (2, 16, 64)])
def test_bad_batch_shape(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"batch shape|image shape"):
        corrupt_batch(np.zeros(shape, np.float32), "contrast", 1, 0)


def test_pixels_must_be_floats_in_unit_range() -> None:
    with pytest.raises(ValueError, match=r"dtype is uint8.*divide 8-bit images by 255"):
        corrupt(np.zeros((32, 32, 3), np.uint8), "contrast", 1, 0)
    with pytest.raises(ValueError, match=r"values span \[255, 255\]; expected values in \[0, 1\]"):
        corrupt(np.full((32, 32), 255.0, np.float32), "contrast", 1, 0)
    with pytest.raises(ValueError, match="values span"):
        corrupt(np.full((32, 32), np.nan, np.float32), "contrast", 1, 0)


# --- full size ------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL_CORRUPTIONS)
def test_full_size_224(name: str) -> None:
    image = scene(224, 224, rgb=True)
    outs = [corrupt(image, name, severity, seed=3) for severity in SEVERITIES]
    for out in outs:
        assert out.shape == image.shape and out.dtype == np.float32
        assert out.min() >= 0.0 and out.max() <= 1.0
    distance = [rmse(out, image) for out in outs]
    allowed = ALLOWED_DROP.get(name, 0.0) + 0.05  # one seed at 224 px: allow for the draw
    for severity, (lower, higher) in enumerate(itertools.pairwise(distance), start=1):
        if (name, severity) not in UNORDERED_STEPS:
            assert higher >= lower * (1 - allowed), (name, distance)
