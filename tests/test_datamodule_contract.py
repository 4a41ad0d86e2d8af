"""The datamodule contract: what every dataset of the fixture registry
(``tests/fixtures/registry.py``) promises, checked on its tiny fixture through the calls
training makes (``prepare_data``, ``setup("fit")``, ``train_dataloader``, ``prepare_batch``),
``segkit-prepare check=true`` (``check``), checkpoints (``preprocessing``) and ``segkit-eval``
(``data_config``). A dataset added to the registry is held to all of it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from hydra.utils import get_class, instantiate

from tests.fixtures.registry import DATASETS
from tests.helpers import datamodule_settings, make_datamodule


def build(name: str, root: Path, tmp_path: Path, prepare: bool = True):
    """``name``'s datamodule on ``root`` (the harness's test settings plus the registry's
    contract settings), prepared and set up for training as ``segkit-train`` does."""
    dm = make_datamodule(name, root, tmp_path, **DATASETS[name].contract)
    if prepare:
        dm.prepare_data()
        dm.setup("fit")
    return dm


class Case:
    """One dataset's fixture and its datamodule, prepared and set up once for the module."""

    def __init__(self, name: str, tmp_path: Path) -> None:
        self.name, self.tmp_path = name, tmp_path
        self.root = tmp_path / "data"
        DATASETS[name].write(self.root)
        self.dm = build(name, self.root, tmp_path)
        self.items = {item.name: item for item in self.dm.items()}


@pytest.fixture(scope="module", params=sorted(DATASETS))
def case(request, tmp_path_factory) -> Case:
    return Case(request.param, tmp_path_factory.mktemp(request.param))


def test_train_and_validation_partition_the_items(case):
    dm, items = case.dm, case.items
    train, val = dm.train_dataset.names, dm.val_dataset.names
    assert train and val, f"{case.name}: an empty side ({len(train)} train, {len(val)} val)"
    assert len(set(train)) == len(train) and len(set(val)) == len(val), f"{case.name}: an item twice on one side"
    assert not set(train) & set(val), f"{case.name}: items on both sides: {sorted(set(train) & set(val))[:5]}"
    assert set(train) | set(val) == set(items), f"{case.name}: items on neither side: {sorted(set(items) - set(train) - set(val))[:5]}"
    for dataset in (dm.train_dataset, dm.val_dataset):  # each name reads its own item's files
        for name, image, mask in zip(dataset.names, dataset.image_paths, dataset.mask_paths):
            assert (image, mask) == (items[name].image, items[name].mask), f"{case.name}: {name} reads another item's files"


def test_no_split_group_is_on_both_sides(case):
    """``Item.group`` is what the split keeps together (a car, a scene): never on both sides."""
    dm, items = case.dm, case.items
    shared = {items[n].group for n in dm.train_dataset.names} & {items[n].group for n in dm.val_dataset.names}
    assert not shared, f"{case.name}: {dm.group_name}(s) on both sides of the split: {sorted(shared)[:5]}"


def test_a_training_batch_is_what_the_model_takes(case):
    dm = case.dm
    allowed = set(range(max(dm.num_classes, 2))) | ({dm.ignore_index} if dm.ignore_index is not None else set())
    loader = dm.train_dataloader()
    expected_batch = min(dm.batch_size, len(loader.sampler))
    foreground = 0
    for k, raw in enumerate(loader):
        batch = dm.prepare_batch(raw)
        image, mask = batch["image"], batch["mask"]
        if k == 0:
            assert image.shape[:2] == (expected_batch, dm.in_channels), f"{case.name}: image batch {tuple(image.shape)}"
        assert (image.dtype, mask.dtype) == (torch.float32, torch.int64), f"{case.name}: image {image.dtype}, mask {mask.dtype}"
        assert image.ndim == 4 and image.shape[1] == dm.in_channels, f"{case.name}: image batch {tuple(image.shape)}"
        assert mask.shape == (image.shape[0], *image.shape[2:]), (
            f"{case.name}: mask batch {tuple(mask.shape)} for image batch {tuple(image.shape)}")
        assert torch.isfinite(image).all() and float(image.std()) > 0, f"{case.name}: a non-finite or constant image batch"
        values = set(mask.unique().tolist())
        assert values <= allowed, f"{case.name}: mask values {sorted(values - allowed)} outside 0..{max(dm.num_classes, 2) - 1}"
        assert set(batch["name"]) <= set(dm.train_dataset.names)
        foreground += int(((mask > 0) & (mask != (dm.ignore_index if dm.ignore_index is not None else -1))).sum())
    assert foreground > 0, f"{case.name}: no foreground pixel in a whole training epoch of the fixture"


def test_check_finds_nothing_on_the_clean_fixture(case):
    fresh = build(case.name, case.root, case.tmp_path / "fresh", prepare=False)  # as segkit-prepare check=true: nothing prepared
    assert fresh.check() == []


def test_stray_hidden_files_in_the_image_folder_change_nothing(case):
    root = case.tmp_path / "strays" / "data"
    shutil.copytree(case.root, root)
    images = root / DATASETS[case.name].image_dir
    first = sorted(p for p in images.iterdir() if p.is_file() and not p.name.startswith("."))[0]
    (images / ".DS_Store").write_bytes(b"\0\0\0\1Bud1" + bytes(64))  # Finder's folder settings
    (images / f"._{first.name}").write_bytes(b"\0\5\26\7" + bytes(64))  # an AppleDouble companion of a real image
    dm = build(case.name, root, case.tmp_path / "strays")
    assert dm.check() == []
    assert [(i.name, i.group) for i in dm.items()] == [(i.name, i.group) for i in case.items.values()]
    assert dm.train_dataset.names == case.dm.train_dataset.names and dm.val_dataset.names == case.dm.val_dataset.names


def test_class_names_name_every_label(case):
    dm = case.dm
    names = dm.preprocessing()["class_names"]
    assert len(names) == max(dm.num_classes, 2), f"{case.name}: {names} for num_classes={dm.num_classes}"
    assert len(set(names)) == len(names) and all(isinstance(n, str) and n for n in names)


def test_data_config_rebuilds_an_equal_datamodule(case):
    dm = case.dm
    config = dm.data_config()
    given = {"root": str(case.root), **datamodule_settings(case.name, case.tmp_path, **DATASETS[case.name].contract)}
    lost = {k: (v, config.get(k, "<absent>")) for k, v in given.items() if config.get(k, "<absent>") != v}
    assert not lost, f"{case.name}: data_config() loses arguments (given, kept): {lost}"
    again = instantiate(config, _convert_="all")  # as segkit-eval rebuilds the checkpoint's data
    assert type(again) is type(dm)
    assert again.data_config() == config
    assert again.preprocessing() == dm.preprocessing()
    again.setup("fit")
    assert again.train_dataset.names == dm.train_dataset.names and again.val_dataset.names == dm.val_dataset.names


def test_every_dataset_config_is_registered_and_exported():
    """A dataset added without its registry line (or its export) would silently get no contract tests."""
    import yaml

    import datamodules

    registered = {entry.datamodule for entry in DATASETS.values()}
    for path in sorted((Path(__file__).resolve().parents[1] / "conf" / "dataset").glob("[!_]*.yaml")):
        target = yaml.safe_load(path.read_text())["_target_"]
        cls = get_class(target)
        assert cls in registered, f"{path.name}: {cls.__name__} has no entry in tests/fixtures/registry.py DATASETS"
        assert getattr(datamodules, cls.__name__, None) is cls, f"{path.name}: datamodules/__init__.py does not export {cls.__name__}"
