"""A small CNN for the scikit-learn digits, trained deterministically on first use and cached by content.

It is the one reference model with a meaningful accuracy, so parity and robustness runs have a real
number to protect. Training takes a few seconds on one core; the weights are cached under
``cache_dir()/zoo`` keyed by a hash of this file, the training config and the training data, so any change
to one of them retrains instead of loading stale weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from harness.errors import ConfigError
from harness.paths import cache_dir as cache_dir  # re-exported: zoo weights live in cache_dir() / "zoo"
from harness.zoo.datasets import load_dataset

# Bump when the training recipe changes in a way the source hash would not catch (it catches most).
DIGITS_TRAINING_VERSION = 1

# The catalog normalises [0, 1] pixels with these; training uses exactly the same transform.
DIGITS_MEAN = (0.5,)
DIGITS_STD = (0.5,)

_INPUT_SHAPE = (1, 32, 32)
_NUM_CLASSES = 10
_BATCH_SIZE = 64
_MAX_LR = 0.01
_WEIGHT_DECAY = 1e-4


@contextmanager
def deterministic_torch(seed: int) -> Iterator[None]:
    """Seed torch and pin it to one thread and deterministic kernels; restore all of it afterwards.

    One thread because CPU reductions split work by thread count, so results would otherwise differ in
    the last bits between a 2-core CI runner and a 16-core workstation.
    """
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    # fork_rng leaves the caller's global RNG stream exactly where it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.set_num_threads(1)
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
            torch.set_num_threads(threads)


class DigitsCNN(nn.Module):
    """Three stride-2 conv/BN/ReLU stages (32 -> 16 -> 8 -> 4) and a linear classifier."""

    def __init__(self, num_classes: int = _NUM_CLASSES) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = _INPUT_SHAPE[0]
        for width in (8, 16, 32):
            layers += [
                nn.Conv2d(channels, width, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            channels = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.classifier(torch.flatten(self.features(x), 1))
        return logits


def _normalise(images: np.ndarray) -> torch.Tensor:
    mean = torch.tensor(DIGITS_MEAN, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(DIGITS_STD, dtype=torch.float32).view(1, -1, 1, 1)
    return (torch.from_numpy(np.array(images, dtype=np.float32)) - mean) / std


def _training_config(seed: int, epochs: int) -> dict[str, Any]:
    return {
        "version": DIGITS_TRAINING_VERSION,
        "seed": seed,
        "epochs": epochs,
        "batch_size": _BATCH_SIZE,
        "max_lr": _MAX_LR,
        "weight_decay": _WEIGHT_DECAY,
        "input_shape": list(_INPUT_SHAPE),
        "mean": list(DIGITS_MEAN),
        "std": list(DIGITS_STD),
    }


@lru_cache(maxsize=1)
def _data_digest() -> str:
    train = load_dataset("digits-train", shape=_INPUT_SHAPE)
    assert train.labels is not None
    digest = hashlib.sha256()
    digest.update(train.images.tobytes())
    digest.update(train.labels.tobytes())
    return digest.hexdigest()


def training_fingerprint(seed: int = 0, epochs: int = 30) -> str:
    """A sha256 over this module's source, the training config and the training data."""
    digest = hashlib.sha256()
    digest.update(Path(__file__).read_bytes())
    digest.update(json.dumps(_training_config(seed, epochs), sort_keys=True).encode())
    digest.update(_data_digest().encode())
    return digest.hexdigest()


def _train(seed: int, epochs: int) -> dict[str, torch.Tensor]:
    """Train from scratch on digits-train and return the state_dict; bit-exact for (seed, epochs)."""
    train = load_dataset("digits-train", shape=_INPUT_SHAPE)
    assert train.labels is not None
    x = _normalise(train.images)
    y = torch.from_numpy(train.labels)
    with deterministic_torch(seed):
        model = DigitsCNN()
        optimiser = torch.optim.AdamW(model.parameters(), lr=_MAX_LR, weight_decay=_WEIGHT_DECAY)
        steps_per_epoch = -(-len(x) // _BATCH_SIZE)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimiser, max_lr=_MAX_LR, total_steps=max(1, epochs * steps_per_epoch)
        )
        # A private generator: the batch order depends on the seed alone, not on the init's RNG draws.
        order = torch.Generator().manual_seed(seed)
        model.train()
        for _ in range(epochs):
            permutation = torch.randperm(len(x), generator=order)
            for start in range(0, len(x), _BATCH_SIZE):
                batch = permutation[start : start + _BATCH_SIZE]
                loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
                optimiser.zero_grad(set_to_none=True)
                torch.autograd.backward(loss)
                optimiser.step()
                schedule.step()
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def weights_path(seed: int = 0, epochs: int = 30) -> Path:
    """Where the trained weights for (seed, epochs) live in the cache."""
    return cache_dir() / "zoo" / f"digits_cnn-{training_fingerprint(seed, epochs)[:20]}.pt"


def _load_cached(path: Path) -> dict[str, torch.Tensor] | None:
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        # A truncated or foreign file is a cache miss, not an error: retrain and overwrite it. Broad on
        # purpose: torch's weights-only unpickler raises KeyError, AssertionError, EOFError and more on junk.
        return None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return None
    return state


def _save_atomically(state: dict[str, torch.Tensor], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename: a concurrent reader (pytest-xdist workers) never sees half a file.
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
        # mkstemp makes the file private; the cache may be shared by the lab's CI users.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def digits_cnn(seed: int = 0, epochs: int = 30) -> nn.Module:
    """The trained digits CNN in eval mode: 1x32x32 input normalised by DIGITS_MEAN/STD, 10 logits."""
    if epochs < 1:
        raise ConfigError(f"digits_cnn: epochs must be >= 1, got {epochs}", key="epochs", fix="e.g. epochs: 30")
    path = weights_path(seed, epochs)
    # Construction draws initial weights; keep those draws off the caller's RNG stream.
    with torch.random.fork_rng(devices=[]):
        model = DigitsCNN()
    state = _load_cached(path)
    try:
        if state is not None:
            model.load_state_dict(state)
    except RuntimeError:
        # Tensors that do not fit this architecture: as good as no cache at all.
        state = None
    if state is None:
        state = _train(seed, epochs)
        model.load_state_dict(state)
        _save_atomically(state, path)
    return model.eval()
