import shutil
from functools import partial

import numpy as np
import pytest

from datamodules.carvana import CarvanaDataModule, car_id
from segkit.prepare import run_check
from tests.conftest import realdata
from tests.fixtures.carvana import write_carvana, write_gif_mask
from tests.fixtures.reference import naive_rle_encode
from tests.helpers import assert_augmentation_keeps_alignment, assert_samples, make_datamodule

make_dm = partial(make_datamodule, "carvana")


def test_gif_masks_shapes_and_values(tmp_path):
    masks = write_carvana(tmp_path / "c")
    dm = make_dm(tmp_path / "c", tmp_path)
    dm.setup("fit")
    assert_samples(dm.train_dataset, 3, (48, 72), {0, 1})
    for dataset in (dm.train_dataset, dm.val_dataset):
        for i, name in enumerate(dataset.names):
            np.testing.assert_array_equal(dataset[i]["mask"].numpy(), masks[name])


def test_split_by_car_never_by_image(tmp_path):
    write_carvana(tmp_path / "c", n_cars=6, views=4)
    dm = make_dm(tmp_path / "c", tmp_path, val_fraction=0.34)
    dm.setup("fit")
    train_cars = {car_id(n[:-4]) for n in dm.train_dataset.names}
    val_cars = {car_id(n[:-4]) for n in dm.val_dataset.names}
    assert not train_cars & val_cars and len(val_cars) == 2
    assert len(dm.val_dataset) == 2 * 4  # every view of a held-out car


def test_csv_masks_equal_gif_masks_and_pad_mode(tmp_path):
    masks = write_carvana(tmp_path / "c", csv=True)
    dm = make_dm(tmp_path / "c", tmp_path, mask_source="csv", pad_multiple=32, ignore_index=255)
    dm.prepare_data()
    dm.setup("fit")
    sample = dm.train_dataset[0]
    assert tuple(sample["mask"].shape) == (64, 96)  # 48x72 padded to multiples of 32
    np.testing.assert_array_equal(sample["mask"][:48, :72].numpy(), masks[dm.train_dataset.names[0]])
    assert (sample["mask"][48:] == 255).all() and (sample["mask"][:, 72:] == 255).all()
    assert run_check(dm) == []


def test_wrong_pixel_order_in_the_csv_is_detected(tmp_path):
    write_carvana(tmp_path / "c", csv=True)
    csv = tmp_path / "c" / "train_masks.csv"
    lines = csv.read_text().splitlines()
    name = lines[1].split(",")[0]
    from segkit.data.io import read_mask

    gif = read_mask(tmp_path / "c" / "train_masks" / name.replace(".jpg", "_mask.gif"))
    lines[1] = f"{name},{naive_rle_encode(gif, 'F')}"  # Airbus' column-major order
    csv.write_text("\n".join(lines) + "\n")
    problems = make_dm(tmp_path / "c", tmp_path, mask_source="csv").check()
    assert len(problems) == 1
    assert "train_masks.csv:2" in problems[0] and "differs from" in problems[0] and "row-major" in problems[0]


def test_augmentation_keeps_image_and_mask_aligned():
    # deliberately the dataset's own augmentation (shift, scale, rotate), applied every time
    always = {name: {**spec, "p": 1.0} for name, spec in CarvanaDataModule.defaults["augment"].items()}
    assert_augmentation_keeps_alignment(CarvanaDataModule(augment=always, image_size=None), tolerance=0.03)


def test_unpaired_files_are_all_reported(tmp_path):
    write_carvana(tmp_path / "c")
    gifs = sorted((tmp_path / "c" / "train_masks").glob("*.gif"))
    gifs[0].unlink()
    write_gif_mask(tmp_path / "c" / "train_masks" / "ffffffffffff_01_mask.gif", np.zeros((48, 72), np.uint8))
    dm = make_dm(tmp_path / "c", tmp_path)
    with pytest.raises(ValueError, match=r"2 file\(s\) in carvana data .* have no counterpart(.|\n)*image has no mask(.|\n)*ffffffffffff_01_mask.gif: mask has no image"):
        dm.setup("fit")


def test_real_carvana_sample(tmp_path):
    folder = realdata("carvana")
    dm = make_dm(folder, tmp_path, val_fraction=0.0)
    dm.setup("fit")
    assert len(dm.train_dataset) == 3
    image, mask = dm.train_dataset.load(0)
    assert image.shape == (1280, 1918, 3) and image.dtype == np.uint8
    assert set(np.unique(mask).tolist()) == {0, 1}
    assert int(mask.sum()) == 327843  # 0cdf5b5d0ce1_01, per SOURCES.md
    # a CSV written from the real GIF masks (row-major) reads back to identical masks
    root = tmp_path / "with_csv"
    shutil.copytree(folder, root)
    rows = ["img,rle_mask"]
    for i, name in enumerate(dm.train_dataset.names):
        rows.append(f"{name},{naive_rle_encode(dm.train_dataset.load_mask(i), 'C')}")
    (root / "train_masks.csv").write_text("\n".join(rows) + "\n")
    csv_dm = make_dm(root, tmp_path / "csv", mask_source="csv", val_fraction=0.0)
    csv_dm.setup("fit")
    for i, name in enumerate(csv_dm.train_dataset.names):
        gif_mask = dm.train_dataset.load_mask(dm.train_dataset.names.index(name))
        np.testing.assert_array_equal(csv_dm.train_dataset.load_mask(i), gif_mask)
    assert csv_dm.check() == []


def test_check_lists_a_split_that_would_stop_training_one_car(tmp_path):
    """The real sample is one car: every file is fine, but validation takes whole cars, so the
    validation split would be empty and training would stop at its set-up. check=true says so
    first, with the way out; with two cars it has nothing to say."""
    one = tmp_path / "one"
    write_carvana(one, n_cars=1, views=3)
    problems = make_datamodule("carvana", one, tmp_path / "c1").check()
    assert problems == [f"carvana data at {one}: the validation split is empty — 3 training image(s), none held out, "
                        "so there would be no validation metrics and no best checkpoint. Validation takes whole cars "
                        "and all the data is one car: add the images of another car, or train without validation "
                        "with data.val_fraction=0"]
    assert make_datamodule("carvana", one, tmp_path / "c2", val_fraction=0).check() == []
    two = tmp_path / "two"
    write_carvana(two, n_cars=2, views=3)
    assert make_datamodule("carvana", two, tmp_path / "c3").check() == []
