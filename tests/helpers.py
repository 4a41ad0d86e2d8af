"""The tests' shared harness: datamodules built from the fixture registry, the tiny CLI
run's overrides, config composition, console scripts and shared assertions."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: the synthetic data of a tiny CLI run (16 images of 64 px, trained at 64 px)
TINY_DATA = ["data.num_images=16", "data.size=64", "data.image_size=64"]
#: the overrides of a tiny ``segkit-train`` run; add a file's own locally: ``[*TINY_TRAIN, "data.num_workers=0"]``
TINY_TRAIN = [*TINY_DATA, "data.batch_size=4"]

#: what every datamodule a test builds has, before the registry's settings and the test's own:
#: samples as stored (no random augmentation; a test that wants the dataset's augmentations
#: says so with ``augment=DEFAULT`` or a spec) and loading in the test's own process
TEST_SETTINGS: dict[str, Any] = {"augment": None, "num_workers": 0}


def datamodule_settings(dataset: str, tmp_path, **overrides) -> dict[str, Any]:
    """The arguments :func:`make_datamodule` gives (all but ``root``): :data:`TEST_SETTINGS`,
    derived files in ``tmp_path/work``, then the registry's settings for ``dataset``, then ``overrides``."""
    from tests.fixtures.registry import DATASETS

    return {**TEST_SETTINGS, "cache_dir": str(Path(tmp_path) / "work"), **DATASETS[dataset].settings, **overrides}


def make_datamodule(dataset: str, root, tmp_path, **overrides):
    """The ``dataset`` datamodule (a name of ``tests.fixtures.registry.DATASETS``) on the data
    at ``root`` with :func:`datamodule_settings`. A test file may alias it:
    ``make_dm = partial(make_datamodule, "oilseep")``."""
    from tests.fixtures.registry import DATASETS

    return DATASETS[dataset].datamodule(root=str(root), **datamodule_settings(dataset, tmp_path, **overrides))


def write_fixture(dataset: str, root, **kwargs):
    """Write ``dataset``'s tiny fixture below ``root``; returns what its writer returns."""
    from tests.fixtures.registry import DATASETS

    return DATASETS[dataset].write(Path(root), **kwargs)


def segkit_command(name: str, *args: str) -> list[str]:
    """The installed console script ``name`` (segkit-train, segkit-prepare) with ``args``."""
    return [str(Path(sys.executable).with_name(name)), *args]


def segkit_env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HYDRA_FULL_ERROR": "0"}


def run_segkit(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run a console script to completion, capturing its output."""
    return subprocess.run(segkit_command(name, *args), cwd=cwd, env=segkit_env(), capture_output=True, text=True, timeout=600)


def assert_samples(dataset, channels: int, shape: tuple[int, int], labels: set[int], n: int | None = None) -> None:
    """Every sample: H×W×C image as decoded (uint8 / uint16), H×W mask of the dataset's
    mask dtype with labels in ``labels``."""
    expected_image = {"uint8": torch.uint8, "uint16": torch.uint16}.get(dataset.image_spec.dtype)
    expected_mask = torch.from_numpy(np.zeros(1, dataset.mask_values.dtype)).dtype
    for i in range(len(dataset) if n is None else min(n, len(dataset))):
        sample = dataset[i]
        assert tuple(sample["image"].shape) == (*shape, channels)
        assert sample["image"].dtype in (torch.uint8, torch.uint16)
        assert expected_image is None or sample["image"].dtype == expected_image
        assert sample["mask"].dtype == expected_mask and tuple(sample["mask"].shape) == shape
        assert set(sample["mask"].unique().tolist()) <= labels


def assert_augmentation_keeps_alignment(datamodule, tolerance: float = 0.02, rounds: int = 6) -> None:
    """A mask drawn from the image itself (bright = foreground) stays equal to it after
    the training augmentations (up to interpolation at edges)."""
    from segkit.data.transforms import build_pipeline

    pipeline = build_pipeline(datamodule.image_size, datamodule.augment, datamodule.pad_multiple)
    mask = np.zeros((64, 96), np.uint8)
    mask[10:30, 20:50] = 1
    mask[40:60, 60:70] = 1
    dtype = np.uint16 if datamodule.image_dtype == "uint16" else np.uint8
    top = np.iinfo(dtype).max
    image = np.repeat((mask.astype(dtype) * top)[:, :, None], datamodule.in_channels, axis=2)
    for _ in range(rounds):  # each round draws other augmentations
        out = pipeline(image=image, mask=mask)
        drawn = out["image"][..., 0].astype(np.float64) > top / 2
        assert np.mean(drawn != (out["mask"] > 0)) <= tolerance
        assert out["mask"].any()


def compose_config(name: str, overrides: list[str] = (), **kwargs):
    """The composed Hydra config ``name`` (train, prepare, predict, eval, export) with
    ``overrides``; ``kwargs`` go to ``hydra.compose`` (``return_hydra_config=True``)."""
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="segkit.conf", version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides), **kwargs)


def conv1x1_module(channels: int = 3, classes: int = 1, seed: int = 0, **hparams):
    """A SegmentationModule whose network is one 1x1 convolution: translation-, flip- and
    rotation-equivariant, so any tiling or TTA must reproduce its whole-image output."""
    from segkit.models import SegmentationNet
    from segkit.module import SegmentationModule

    module = SegmentationModule(
        model={"name": "segnet"}, loss={"name": "dice"}, optimizer={"_target_": "torch.optim.SGD", "lr": 0.1},
        num_classes=classes, in_channels=channels, channels_last=False, **hparams,
    )
    torch.manual_seed(seed)
    module.net = SegmentationNet(torch.nn.Conv2d(channels, max(classes, 1), kernel_size=1), size_multiple=1, name="conv1x1")
    return module.eval()


def model_sample(datamodule, dataset, index: int) -> dict:
    """Sample ``index`` as the model receives it: collated, then ``datamodule.prepare_batch``
    (normalised C×H×W float32 image, int64 mask)."""
    from torch.utils.data import default_collate

    batch = datamodule.prepare_batch(default_collate([dataset[index]]))
    return {"image": batch["image"][0], "mask": batch["mask"][0], "name": batch["name"][0]}


def albumentations_normalize(image: np.ndarray, normalize) -> np.ndarray:
    """Reference normalisation of an ``(H, W, C)`` image: ``albumentations.Normalize(**normalize)``,
    or division by the dtype's maximum for ``None``; float32, ``(H, W, C)``."""
    import albumentations as A

    if normalize is None:
        return image.astype(np.float32) / np.iinfo(image.dtype).max
    return np.asarray(A.Normalize(**normalize)(image=image)["image"], np.float32).reshape(image.shape)
