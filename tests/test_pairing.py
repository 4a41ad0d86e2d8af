"""segkit.data.pairing: images with masks by a key, as every two-folder dataset pairs them."""

import shutil

import pytest

from datamodules.buildings import BuildingsDataModule
from datamodules.dota import DotaDataModule
from segkit.data.pairing import files_by_key, pair_by_key, stem
from tests.fixtures.buildings import write_buildings
from tests.fixtures.dota import write_dota


def touch(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"x")


def test_pairs_in_image_order_and_every_unpaired_file_named(tmp_path):
    touch(tmp_path / "img", "b.tif", "a.tif", "only_image.tif", ".DS_Store", "._a.tif", "notes.txt")
    touch(tmp_path / "msk", "a.tif", "b.tif", "only_mask.tif")
    problems = []
    images = files_by_key(tmp_path / "img", (".tif",), problems=problems)
    masks = files_by_key(tmp_path / "msk", (".tif",), problems=problems)
    pairs, missing = pair_by_key(images, masks, mask_for=lambda k: tmp_path / "msk" / k, image_for=lambda k: tmp_path / "img" / k)
    assert problems == []
    assert [(k, i.name, m.name) for k, i, m in pairs] == [("a.tif", "a.tif", "a.tif"), ("b.tif", "b.tif", "b.tif")]
    assert missing == [f"{tmp_path / 'img' / 'only_image.tif'}: image has no mask (expected {tmp_path / 'msk' / 'only_image.tif'})",
                       f"{tmp_path / 'msk' / 'only_mask.tif'}: mask has no image {tmp_path / 'img' / 'only_mask.tif'}"]


def test_a_name_without_a_key_and_two_files_for_one_key_are_problems(tmp_path):
    touch(tmp_path / "img", "img_1.tif", "img_1.tiff", "other_2.tif")
    problems = []
    keyed = files_by_key(tmp_path / "img", (".tif", ".tiff"), lambda p: p.stem[4:] if p.stem.startswith("img_") else None,
                         problems=problems, what="image", bad_name="file name does not start with 'img_'")
    assert keyed == {"1": tmp_path / "img" / "img_1.tif"}
    assert problems == [f"{tmp_path / 'img' / 'img_1.tiff'}: two images with the key '1' (img_1.tif too)",
                        f"{tmp_path / 'img' / 'other_2.tif'}: file name does not start with 'img_'"]
    assert stem(tmp_path / "P0001.png") == "P0001"


def test_a_dota_scene_given_twice_is_refused_whatever_data_missing_says(tmp_path):
    write_dota(tmp_path / "d")
    image = sorted((tmp_path / "d" / "images").glob("*.png"))[0]
    shutil.copy(image, image.with_suffix(".jpg"))
    dm = DotaDataModule(root=str(tmp_path / "d"), cache_dir=str(tmp_path / "w"), patch_size=64, overlap=16, missing="skip")
    with pytest.raises(ValueError, match=rf"1 problem\(s\) in dota data .*\n.*{image.name}: two images with the stem '{image.stem}' \({image.stem}.jpg too\)"):
        dm.prepare_dataset()


def test_a_buildings_tile_given_twice_is_a_check_problem(tmp_path):
    write_buildings(tmp_path / "b")
    image = tmp_path / "b" / "train" / "images" / "img_0.tif"
    shutil.copy(image, image.with_suffix(".tiff"))
    problems = BuildingsDataModule(root=str(tmp_path / "b"), cache_dir=str(tmp_path / "w")).check()
    assert problems == [f"{image.with_suffix('.tiff')}: two images with the key '0' (img_0.tif too)"]
