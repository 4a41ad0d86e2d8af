import json
import os
import pickle
import shutil
from functools import partial

import numpy as np
import pandas as pd
import pytest
import torch

from datamodules.airbus import AirbusDataModule, read_airbus_csv
from tests.conftest import realdata
from tests.fixtures.airbus import write_airbus
from tests.fixtures.reference import naive_rle_decode
from tests.helpers import make_datamodule, model_sample


@pytest.fixture()
def airbus(tmp_path):
    return write_airbus(tmp_path / "airbus")


make_dm = partial(make_datamodule, "airbus")


def test_samples_have_the_promised_shapes_dtypes_and_masks(airbus, tmp_path):
    dm = make_dm(airbus.root, tmp_path, val_fraction=0.25, val_background_ratio=1.0)
    dm.prepare_data()
    dm.setup("fit")
    for dataset in (dm.train_dataset, dm.val_dataset):
        for i in range(len(dataset)):
            raw = dataset[i]  # as the workers hand it over: decoded image, uint8 mask
            assert raw["image"].dtype == torch.uint8 and raw["image"].shape == (64, 64, 3)
            assert raw["mask"].dtype == torch.uint8 and raw["mask"].shape == (64, 64)
            sample = model_sample(dm, dataset, i)  # as the model gets it
            assert sample["image"].dtype == torch.float32 and sample["image"].shape == (3, 64, 64)
            assert float(sample["image"].min()) >= 0.0 and float(sample["image"].max()) <= 1.0
            np.testing.assert_allclose(sample["image"].numpy(), raw["image"].numpy().transpose(2, 0, 1) / 255.0, rtol=1e-6)
            assert sample["mask"].dtype == torch.int64 and sample["mask"].shape == (64, 64)
            np.testing.assert_array_equal(sample["mask"].numpy(), airbus.mask(sample["name"]))
    batch = dm.prepare_batch(next(iter(dm.train_dataloader())))
    assert batch["image"].shape == (4, 3, 64, 64) and batch["mask"].shape == (4, 64, 64)
    assert batch["image"].is_contiguous(memory_format=torch.channels_last)


def test_resizing_and_normalisation(airbus, tmp_path):
    dm = make_dm(airbus.root, tmp_path, image_size=32, normalize={"mean": [0.5] * 3, "std": [0.25] * 3})
    dm.setup("fit")
    sample = model_sample(dm, dm.train_dataset, 0)
    raw = dm.train_dataset[0]["image"].numpy().transpose(2, 0, 1)
    assert sample["image"].shape == (3, 32, 32) and sample["mask"].shape == (32, 32)
    np.testing.assert_allclose(sample["image"].numpy(), (raw / 255.0 - 0.5) / 0.25, rtol=1e-5, atol=1e-5)
    assert float(sample["image"].min()) < 0  # (x - 0.5) / 0.25 reaches below zero
    assert set(sample["mask"].unique().tolist()) <= {0, 1}


def test_background_ratio_over_epochs(airbus, tmp_path):
    dm = make_dm(airbus.root, tmp_path, val_fraction=0.2, background_ratio=0.25)
    dm.setup("fit")
    names = dm.train_dataset.names
    n_ship = sum(bool(airbus.ships[n]) for n in names)
    n_bg = len(names) - n_ship
    sampler = dm.train_dataloader().sampler
    draws = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        picked = [names[i] for i, _ in sampler]
        ships = [n for n in picked if airbus.ships[n]]
        background = [n for n in picked if not airbus.ships[n]]
        assert len(ships) == n_ship and len(set(ships)) == n_ship  # every ship image, once
        assert len(background) == round(0.25 * n_bg) and len(set(background)) == len(background)
        draws.append(frozenset(background))
    assert len(set(draws)) > 1  # re-drawn each epoch
    sampler.set_epoch(1)
    assert frozenset(names[i] for i, _ in sampler if not airbus.ships[names[i]]) == draws[1]  # reproducible


def test_split_is_deterministic_stratified_and_row_order_free(airbus, tmp_path):
    first = make_dm(airbus.root, tmp_path, val_fraction=0.25, val_background_ratio=1.0)
    first.setup("fit")
    again = make_dm(airbus.root, tmp_path, val_fraction=0.25, val_background_ratio=1.0)
    again.setup("fit")
    assert first.val_dataset.names == again.val_dataset.names
    assert not set(first.val_dataset.names) & set(first.train_dataset.names)
    val_ships = sum(bool(airbus.ships[n]) for n in first.val_dataset.names)
    assert val_ships == round(0.25 * 12) and len(first.val_dataset) - val_ships == round(0.25 * 20)
    # the same rows in another order give the same split
    frame = pd.read_csv(airbus.csv_path, keep_default_na=False).sample(frac=1.0, random_state=3)
    shuffled = tmp_path / "shuffled"
    shutil.copytree(airbus.root, shuffled)
    frame.to_csv(shuffled / "train_ship_segmentations_v2.csv", index=False)
    other = make_dm(shuffled, tmp_path / "other", val_fraction=0.25, val_background_ratio=1.0)
    other.setup("fit")
    assert other.val_dataset.names == first.val_dataset.names
    # another seed, another split
    seeded = make_dm(airbus.root, tmp_path, val_fraction=0.25, val_background_ratio=1.0, seed=7)
    seeded.setup("fit")
    assert seeded.val_dataset.names != first.val_dataset.names


def test_masks_are_decoded_from_the_csv_rows_with_nothing_written_per_image(airbus, tmp_path):
    """No mask cache: preparation decodes every ship image's rows once (kept as checked by the
    CSV's hash), writes one small record, and masks follow the CSV when it changes."""
    dm = make_dm(airbus.root, tmp_path)
    dm.prepare_data()
    written = sorted(p.relative_to(tmp_path / "work").as_posix() for p in (tmp_path / "work").rglob("*") if p.is_file())
    assert written == ["rle_rows_checked.json"]
    assert json.loads((tmp_path / "work" / "rle_rows_checked.json").read_text())["images"] == 12  # the ship images
    assert "checked before" in make_dm(airbus.root, tmp_path).prepare()[0]

    # drop the last ship of one image: the mask follows the CSV, and the rows are checked again
    frame = pd.read_csv(airbus.csv_path, keep_default_na=False)
    image_id = next(i for i, ships in airbus.ships.items() if len(ships) == 2)
    row = frame.index[frame.ImageId == image_id][-1]
    frame.drop(index=row).to_csv(airbus.csv_path, index=False)
    dm = make_dm(airbus.root, tmp_path)
    assert "checked the RLE rows of 12 images" in dm.prepare()[0]
    dm.setup("fit")
    dataset = dm.train_dataset if image_id in dm.train_dataset.names else dm.val_dataset
    sample = dataset[dataset.names.index(image_id)]
    np.testing.assert_array_equal(sample["mask"].numpy(), airbus.ships[image_id][0])


def test_a_bad_rle_row_stops_preparation_naming_its_line(airbus, tmp_path):
    lines = airbus.csv_path.read_text().splitlines()
    at = next(k for k, line in enumerate(lines) if k and line.split(",")[1])
    image_id, rle = lines[at].split(",")
    lines[at] = f"{image_id},{rle} 999999 5"  # a run past the 64x64 image
    airbus.csv_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"train_ship_segmentations_v2.csv:{at + 1}: '{image_id}': bad RLE for a 64x64 image"):
        make_dm(airbus.root, tmp_path).prepare_data()
    assert not (tmp_path / "work" / "rle_rows_checked.json").exists()  # not recorded as checked


def _reference_mask(rles, shape):
    """Runs set one by one into a flat column-major array: independent of segkit.data.rle."""
    flat = np.zeros(shape[0] * shape[1], np.uint8)
    for rle in rles:
        tokens = [int(t) for t in rle.split()]
        for start, length in zip(tokens[0::2], tokens[1::2]):
            flat[start - 1:start - 1 + length] = 1
    return flat.reshape(shape, order="F")


def test_the_shared_decoder_equals_a_reference_for_every_real_airbus_row(tmp_path):
    """Every row of the real CSV sample, through the compact decoder the loader workers share
    (and pickled, as a spawned worker receives it), against an independent decode."""
    folder = realdata("airbus")
    from segkit.data.rle_csv import CompactRle

    table = read_airbus_csv(folder / "train_ship_segmentations_v2.csv")
    frame = pd.read_csv(folder / "train_ship_segmentations_v2.csv", keep_default_na=False)
    decoder = pickle.loads(pickle.dumps(CompactRle(table, "F")))
    assert len(table.ids) >= 10 and sum(len(rows) for rows in table.rows.values()) >= 20
    for image_id in table.ids:
        rles = [r for r in frame[frame.ImageId == image_id].EncodedPixels if r]
        mask = decoder(image_id, (768, 768))
        np.testing.assert_array_equal(mask, _reference_mask(rles, (768, 768)), err_msg=image_id)
        assert decoder.has_mask(image_id) == bool(rles) and (mask.any() == bool(rles))
        assert [line for line, _ in decoder.rows(image_id)] == [line for line, _ in table.rows.get(image_id, [])]


def test_read_airbus_csv_groups_rows(airbus):
    index = read_airbus_csv(airbus.csv_path)
    assert len(index.ids) == 32
    assert sum(index.has_mask(i) for i in index.ids) == 12
    for image_id, ships in index.rows.items():
        assert len(ships) == len(airbus.ships[image_id])
        assert all(line >= 2 for line, _ in ships)


# ---------------------------------------------------------------- bad input
def test_missing_root_names_the_expected_files(tmp_path):
    dm = make_dm(tmp_path / "nowhere", tmp_path)
    with pytest.raises(FileNotFoundError, match="train_v2/<ImageId>.jpg and train_ship_segmentations_v2.csv"):
        dm.prepare_data()
    with pytest.raises(ValueError, match="data.root is not set"):
        AirbusDataModule(root=None).prepare_data()


def test_missing_csv_is_named(airbus, tmp_path):
    airbus.csv_path.unlink()
    with pytest.raises(FileNotFoundError, match="train_ship_segmentations_v2.csv"):
        make_dm(airbus.root, tmp_path).setup("fit")


def test_csv_without_the_two_columns(airbus, tmp_path):
    airbus.csv_path.write_text("ImageId,Pixels\nabc.jpg,1 2\n")
    with pytest.raises(ValueError, match=r"expected columns ImageId,EncodedPixels.*missing EncodedPixels"):
        make_dm(airbus.root, tmp_path).setup("fit")
    airbus.csv_path.write_text("")
    with pytest.raises(ValueError, match="empty"):
        make_dm(airbus.root, tmp_path).setup("fit")


def test_image_missing_for_an_image_id(airbus, tmp_path):
    victim = next(iter(airbus.ships))
    os.remove(airbus.root / "train_v2" / victim)
    with pytest.raises(ValueError, match=f"1 file\\(s\\) in airbus data .* have no counterpart(.|\n)*ImageId '{victim}' has no image(.|\n)*data.missing=skip"):
        make_dm(airbus.root, tmp_path).setup("fit")


def test_an_image_the_csv_does_not_name_is_reported_not_dropped(airbus, tmp_path):
    """An image in train_v2 without a row has no mask at all (no ships is an empty row): with
    data.missing=error it stops the run naming it; with skip it is counted among those left
    out. Hidden files and other files in the folder are not images."""
    extra = airbus.root / "train_v2" / "zzzextra.jpg"
    shutil.copy(next((airbus.root / "train_v2").glob("*.jpg")), extra)
    (airbus.root / "train_v2" / ".DS_Store").write_bytes(b"")
    (airbus.root / "train_v2" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=rf"1 file\(s\) in airbus data .* have no counterpart(.|\n)*{extra}: image has no "
                                         r"row in .*train_ship_segmentations_v2.csv \(an image without ships has an empty row"):
        make_dm(airbus.root, tmp_path).setup("fit")
    dm = make_dm(airbus.root, tmp_path, missing="skip")
    dm.setup("fit")
    assert len(dm.train_dataset) + len(dm.val_dataset) <= 32 and "zzzextra.jpg" not in list(dm.train_dataset.names)


@pytest.mark.parametrize("image_id", ["../secret.jpg", "/etc/passwd", ".."])
def test_image_ids_cannot_leave_the_root(airbus, tmp_path, image_id):
    line = len(airbus.csv_path.read_text().splitlines()) + 1
    with airbus.csv_path.open("a") as handle:
        handle.write(f"{image_id},\n")
    with pytest.raises(ValueError, match=rf"train_ship_segmentations_v2.csv:{line}: ImageId .* not a plain file name"):
        make_dm(airbus.root, tmp_path).setup("fit")


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_jpeg_is_named(airbus, tmp_path, damage):
    victim = next(i for i, ships in airbus.ships.items() if not ships)
    path = airbus.root / "train_v2" / victim
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not a jpeg at all")
    dm = make_dm(airbus.root, tmp_path, val_fraction=0.0, background_ratio=1.0)
    dm.setup("fit")
    dataset = dm.train_dataset
    with pytest.raises(ValueError, match=f"{victim}: (truncated JPEG|not a JPEG)"):
        dataset[dataset.names.index(victim)]


def test_malformed_rle_names_csv_line_and_image(airbus, tmp_path):
    lines = airbus.csv_path.read_text().splitlines()
    image_id = lines[1].split(",")[0]
    lines[1] = f"{image_id},5 3 6 2"
    airbus.csv_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"train_ship_segmentations_v2.csv:2: '{image_id}'.*overlap"):
        make_dm(airbus.root, tmp_path).prepare_data()


def test_wrong_class_or_channel_count():
    with pytest.raises(ValueError, match="num_classes must be 1 or 2"):
        AirbusDataModule(root="x", num_classes=3)
    with pytest.raises(ValueError, match="in_channels must be 3"):
        AirbusDataModule(root="x", in_channels=1)


def test_real_airbus_sample(tmp_path):
    folder = realdata("airbus")
    root = tmp_path / "real"
    (root / "train_v2").mkdir(parents=True)
    images = sorted(p.name for p in folder.glob("*.jpg"))
    for name in images:
        shutil.copy(folder / name, root / "train_v2" / name)
    frame = pd.read_csv(folder / "train_ship_segmentations_v2.csv", keep_default_na=False)
    frame[frame.ImageId.isin(images)].to_csv(root / "train_ship_segmentations_v2.csv", index=False)
    dm = make_dm(root, tmp_path, val_fraction=0.0)
    dm.setup("fit")
    assert sorted(dm.train_dataset.names) == images
    for i, name in enumerate(dm.train_dataset.names):
        sample = dm.train_dataset[i]
        assert sample["image"].shape == (768, 768, 3)
        expected = np.zeros((768, 768), np.uint8)
        for rle in frame[frame.ImageId == name].EncodedPixels:
            expected |= naive_rle_decode(rle, (768, 768), "F")
        np.testing.assert_array_equal(sample["mask"].numpy(), expected)
    one_ship = dm.train_dataset.names.index("0a1b7d6ec.jpg")
    assert int(dm.train_dataset[one_ship]["mask"].sum()) == 377
    # the same masks from loader workers (forked, sharing the compact tables)
    loader = torch.utils.data.DataLoader(dm.train_dataset, batch_size=1, num_workers=2)
    for batch in loader:
        expected = np.zeros((768, 768), np.uint8)
        for rle in frame[frame.ImageId == batch["name"][0]].EncodedPixels:
            expected |= _reference_mask([rle] if rle else [], (768, 768))
        np.testing.assert_array_equal(batch["mask"][0].numpy(), expected)
