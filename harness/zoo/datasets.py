"""The image sets the project defines itself: float32 NCHW pixels in [0, 1], nothing downloaded.

Normalisation is not applied here: the catalog names it and the harness applies it, so the same pixels
feed every backend and the FP32 reference alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from types import MappingProxyType
from typing import Protocol

import numpy as np
from scipy import ndimage

from harness.errors import ConfigError, UnknownNameError

Shape = tuple[int, int, int]

# Generated sets have no natural size; this many images unless the caller says otherwise.
DEFAULT_GENERATED_COUNT = 64


# eq=False: a generated __eq__ would compare arrays elementwise and fail on truthiness; identity will do.
@dataclass(frozen=True, eq=False)
class LabeledImages:
    """A batch of images in pixel space with their class labels, if the set has any."""

    images: np.ndarray  # (N, C, H, W) float32 in [0, 1]
    labels: np.ndarray | None  # (N,) int64, or None for unlabeled sets
    name: str

    def __len__(self) -> int:
        return int(self.images.shape[0])


class DatasetLoader(Protocol):
    """Builds one named set; deterministic for its arguments."""

    def __call__(self, *, count: int | None, seed: int, shape: Shape) -> LabeledImages: ...


def load_dataset(
    name: str, *, count: int | None = None, seed: int = 0, shape: Shape = (1, 32, 32)
) -> LabeledImages:
    """Load a registered set by name; ``count`` keeps the first images, ``shape`` is (C, H, W)."""
    try:
        loader = DATASETS[name]
    except KeyError:
        raise UnknownNameError("data set", name, sorted(DATASETS)) from None
    _check_args(name, count, shape)
    return loader(count=count, seed=seed, shape=shape)


def _check_args(name: str, count: int | None, shape: Shape) -> None:
    if count is not None and count < 0:
        raise ConfigError(f"data set {name!r}: count must be >= 0, got {count}", key="count")
    if len(shape) != 3 or any(int(d) < 1 for d in shape):
        raise ConfigError(
            f"data set {name!r}: shape must be (channels, height, width) of positive sizes, got {shape!r}",
            key="shape",
            fix="e.g. shape=(1, 32, 32) or (3, 224, 224)",
        )


# --- scikit-learn digits -------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The fixed stratified 80/20 split of the bundled 8x8 digits, pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = (np.asarray(bunch.images, dtype=np.float64) / 16.0).astype(np.float32)
    labels = np.asarray(bunch.target, dtype=np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=0.2, random_state=0, stratify=labels
    )
    arrays = (x_train, y_train, x_test, y_test)
    for a in arrays:
        # Cached and shared between calls: make accidental in-place edits fail loudly.
        a.setflags(write=False)
    return arrays


def _resize_digits(images: np.ndarray, shape: Shape) -> np.ndarray:
    """Upsample (N, 8, 8) digits bilinearly to (N, C, H, W), repeating the gray channel."""
    channels, height, width = shape
    n, src_h, src_w = images.shape
    if (height, width) == (src_h, src_w):
        resized = np.array(images, dtype=np.float32)
    else:
        resized = ndimage.zoom(
            images, (1.0, height / src_h, width / src_w), order=1, mode="nearest", grid_mode=False
        ).astype(np.float32)
    # Bilinear interpolation stays within the input range up to rounding; clip the rounding.
    np.clip(resized, 0.0, 1.0, out=resized)
    return np.repeat(resized.reshape(n, 1, height, width), channels, axis=1)


def _digits_loader(part: str) -> DatasetLoader:
    def load(*, count: int | None, seed: int, shape: Shape) -> LabeledImages:
        # The split is fixed (random_state=0) so that every run scores the same 360 test images;
        # ``seed`` only varies generated sets.
        del seed
        x_train, y_train, x_test, y_test = _digits_split()
        images, labels = (x_train, y_train) if part == "train" else (x_test, y_test)
        if count is not None:
            images, labels = images[:count], labels[:count]
        return LabeledImages(_resize_digits(images, shape), np.array(labels), f"digits-{part}")

    return load


# --- generated sets ------------------------------------------------------------------------------


def _upsample(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear upsampling of a (C, h, w) grid to (C, height, width), corners aligned."""
    _, h, w = grid.shape
    out = ndimage.zoom(grid, (1.0, height / h, width / w), order=1, mode="nearest", grid_mode=False)
    return np.asarray(out, dtype=np.float64)


def _octave(rng: np.random.Generator, channels: int, cells: int) -> np.ndarray:
    """A (channels, cells+1, cells+1) noise grid, mostly shared across channels as luminance is."""
    shared = rng.standard_normal((1, cells + 1, cells + 1))
    return shared + 0.5 * rng.standard_normal((channels, cells + 1, cells + 1))


def _smooth_image(rng: np.random.Generator, shape: Shape) -> np.ndarray:
    """One image of 1/f (photograph-like) noise, a colour gradient and a few soft-edged shapes."""
    channels, height, width = shape
    # Octaves of noise down to a few pixels, amplitude halving per octave: the 1/f spectrum of
    # photographs. Fine detail matters: on purely smooth images a random 3x3 filter sees almost no
    # signal, so quantisation noise would dominate and INT8 parity would measure nothing useful.
    # Built as a pyramid (upsample 2x, add the next octave) so the cost is one full-size resize.
    cells, weight = 3, 1.0
    grid = _octave(rng, channels, cells)
    while cells * 2 <= max(height, width) // 2:
        cells, weight = cells * 2, weight * 0.5
        grid = _upsample(grid, cells + 1, cells + 1) + weight * _octave(rng, channels, cells)
    image = _upsample(grid, height, width)

    yy, xx = np.meshgrid(np.linspace(-1.0, 1.0, height), np.linspace(-1.0, 1.0, width), indexing="ij")
    angle = rng.uniform(0.0, 2.0 * np.pi)
    ramp = np.cos(angle) * xx + np.sin(angle) * yy
    image += rng.uniform(-1.0, 1.0, (channels, 1, 1)) * ramp

    for _ in range(int(rng.integers(1, 4))):
        cy, cx = rng.uniform(-0.8, 0.8, 2)
        ry, rx = rng.uniform(0.1, 0.5, 2)
        if rng.random() < 0.5:
            dist = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
        else:
            dist = np.maximum(np.abs(yy - cy) / ry, np.abs(xx - cx) / rx)
        # A soft edge a few pixels wide rather than a hard step, so no aliasing at small sizes.
        softness = 3.0 / max(height, width) / min(ry, rx) + 1e-3
        mask = 1.0 / (1.0 + np.exp(np.clip((dist - 1.0) / softness, -50.0, 50.0)))
        colour = rng.uniform(-2.0, 2.0, (channels, 1, 1))
        image = image * (1.0 - mask) + colour * mask

    # Stretch to a random sub-range of [0, 1]: varied brightness and contrast, never out of range.
    lo, hi = image.min(), image.max()
    image = (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
    low = rng.uniform(0.0, 0.3)
    high = rng.uniform(0.7, 1.0)
    return (low + (high - low) * image).astype(np.float32)


def _random_smooth(*, count: int | None, seed: int, shape: Shape) -> LabeledImages:
    n = DEFAULT_GENERATED_COUNT if count is None else count
    # One generator per (seed, index): the first k images are the same whatever count is asked for.
    images = [_smooth_image(np.random.default_rng([seed, i]), shape) for i in range(n)]
    stacked = np.stack(images) if images else np.zeros((0, *shape), dtype=np.float32)
    return LabeledImages(stacked, None, "random-smooth")


def _constant(*, count: int | None, seed: int, shape: Shape) -> LabeledImages:
    del seed  # every image is the same mid gray
    n = DEFAULT_GENERATED_COUNT if count is None else count
    return LabeledImages(np.full((n, *shape), 0.5, dtype=np.float32), None, "constant")


DATASETS: Mapping[str, DatasetLoader] = MappingProxyType(
    {
        "digits-train": _digits_loader("train"),
        "digits-test": _digits_loader("test"),
        "random-smooth": _random_smooth,
        "constant": _constant,
    }
)
