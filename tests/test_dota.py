import csv
import json
import warnings
from functools import partial

import cv2
import numpy as np
import pytest

from datamodules.dota import DOTA_CLASSES, DotaDataModule, parse_dota_labels, rasterize_dota
from segkit.data.io import read_image, read_mask
from segkit.data.tiling import axis_starts, iter_patches, patch_grid
from tests.conftest import realdata
from tests.fixtures.dota import write_dota, write_dota_scene
from tests.helpers import assert_augmentation_keeps_alignment, assert_samples, compose_config, make_datamodule

make_dm = partial(make_datamodule, "dota")


# ------------------------------------------------------------------ the grid
@pytest.mark.parametrize("size, patch, overlap", [(1000, 1024, 200), (4000, 1024, 200), (260, 64, 16), (64, 64, 16), (65, 64, 0)])
def test_grid_covers_every_pixel_with_the_overlap_and_flush_edges(size, patch, overlap):
    starts = axis_starts(size, patch, overlap)
    assert starts[0] == 0
    if size > patch:
        assert starts[-1] == size - patch  # flush with the border
        assert all(b - a == patch - overlap for a, b in zip(starts[:-2], starts[1:-1]))
        assert starts[-1] - starts[-2] <= patch - overlap  # the last step overlaps at least as much
    covered = np.zeros(size, int)
    for s in starts:
        covered[s : s + patch] += 1
    assert (covered >= 1).all()
    grid = patch_grid(size, size + 7, patch, overlap)
    assert len(grid) == len(starts) * len(axis_starts(size + 7, patch, overlap))


def test_grid_rejects_bad_overlap():
    with pytest.raises(ValueError, match="overlap must be in"):
        axis_starts(100, 64, 64)


# --------------------------------------------------------------- labels
def test_labels_parse_and_rasterise_with_small_objects_on_top(tmp_path):
    label = tmp_path / "P1.txt"
    label.write_text(
        "imagesource:GoogleEarth\ngsd:0.3\n"
        "0 0 40 0 40 40 0 40 harbor 0\n"
        "10 10 20 10 20 20 10 20 small-vehicle 1\n"
    )
    objects, problems = parse_dota_labels(label)
    assert problems == [] and [o.category for o in objects] == ["harbor", "small-vehicle"]
    assert [o.line for o in objects] == [3, 4] and objects[1].difficult
    mask = rasterize_dota(objects[::-1], (50, 50), label)  # drawing order follows area, not file order
    assert mask[15, 15] == DOTA_CLASSES.index("small-vehicle")
    assert mask[30, 30] == DOTA_CLASSES.index("harbor") and mask[45, 45] == 0
    no_difficult = rasterize_dota(objects, (50, 50), label, skip_difficult=True)
    assert no_difficult[15, 15] == DOTA_CLASSES.index("harbor")


def test_label_problems_name_file_and_line(tmp_path):
    label = tmp_path / "P2.txt"
    label.write_text(
        "imagesource:GF\ngsd:1\n"
        "1 1 5 1 5 5 1 5 spaceship 0\n"
        "1 1 5 1 5 5 plane 0\n"
        "a b 5 1 5 5 1 5 plane 0\n"
        "1 1 5 1 5 5 1 5 plane 2\n"
    )
    _, problems = parse_dota_labels(label)
    assert len(problems) == 4
    assert problems[0].startswith(f"{label}:3: unknown category 'spaceship'")
    assert problems[1].startswith(f"{label}:4: expected 'x1 y1 x2 y2 x3 y3 x4 y4 category difficult', got 8 fields")
    assert problems[2].startswith(f"{label}:5: coordinates are not numbers")
    assert problems[3].startswith(f"{label}:6: difficult must be 0 or 1")


def test_polygon_outside_the_image_is_clipped_with_a_warning(tmp_path):
    label = tmp_path / "P3.txt"
    label.write_text("-10 -10 30 -10 30 30 -10 30 plane 0\n")
    objects, _ = parse_dota_labels(label)
    with pytest.warns(UserWarning, match=r"P3.txt:1: polygon reaches outside the 20x20 image; clipped"):
        mask = rasterize_dota(objects, (20, 20), label)
    assert (mask == DOTA_CLASSES.index("plane")).all()


# ------------------------------------------------------------- preparation
def test_patches_reassemble_into_the_scene_masks(tmp_path):
    shapes = [(180, 260), (90, 70), (150, 150), (40, 52)]  # the last is smaller than a patch both ways: padded
    scenes = write_dota(tmp_path / "d", shapes=shapes)
    dm = make_dm(tmp_path / "d", tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the fixture polygons all lie inside their scenes
        messages = dm.prepare_dataset()
    assert "cut 4 scenes into" in messages[0]
    assert "patches up to date" in dm.prepare_dataset()[0]  # idempotent
    with (dm.patch_dir / "index.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    for name, (height, width) in zip(sorted(scenes), shapes):
        objects, _ = parse_dota_labels(tmp_path / "d" / "labelTxt" / f"{name}.txt")
        expected = rasterize_dota(objects, (height, width), name)
        canvas = np.full((max(height, 64), max(width, 64)), 254, np.uint8)
        mine = [r for r in rows if r["source"] == name]
        assert len(mine) == len(patch_grid(height, width, 64, 16))
        for row in mine:
            y, x = int(row["y"]), int(row["x"])
            patch = read_mask(dm.patch_dir / "masks" / f"{row['patch']}.png")
            assert patch.shape == (64, 64)
            region = canvas[y : y + 64, x : x + 64]
            overlap = region != 254
            assert (region[overlap] == patch[: region.shape[0], : region.shape[1]][overlap]).all()
            canvas[y : y + 64, x : x + 64] = patch[: region.shape[0], : region.shape[1]]
        np.testing.assert_array_equal(canvas[:height, :width], expected)
        if height < 64 and width < 64:  # one patch, padded below and to the right with ignore_index (255)
            assert mine == [{"patch": f"{name}__0_0", "source": name, "y": "0", "x": "0"}]
            assert (canvas[height:] == 255).all() and (canvas[:, width:] == 255).all()


def test_a_large_scene_cut_band_by_band_gives_the_patches_of_the_whole_scene(tmp_path):
    """Preparation draws the class mask one band of patch rows at a time; every image and mask
    patch equals the one cut from the whole scene and its whole mask. Hundreds of rotated
    boxes, of all sizes, cross band and patch borders, and some the scene's edges (clipped)."""
    rng = np.random.default_rng(7)
    height, width = 1100, 900
    image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    objects = []
    for k in range(500):
        centre = rng.uniform([-40, -40], [width + 40, height + 40])
        size = rng.uniform(3, 400 if k % 40 == 0 else 60, 2)
        angle = rng.uniform(0, np.pi)
        box = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * size / 2
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        objects.append((np.round(box @ rotation.T + centre), DOTA_CLASSES[1 + k % 15], 0))
    write_dota_scene(tmp_path / "d", "P0001", image, objects)
    dm = make_dm(tmp_path / "d", tmp_path, patch_size=256, overlap=40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the boxes reaching outside the scene, clipped
        dm.prepare_dataset()
        parsed, _ = parse_dota_labels(tmp_path / "d" / "labelTxt" / "P0001.txt")
        whole = rasterize_dota(parsed, (height, width), "P0001")
    assert len(np.unique(whole)) > 10
    expected = {f"P0001__{y}_{x}": (img, msk) for y, x, img, msk in iter_patches(image, whole, 256, 40, 0, 0)}
    written = sorted(p.stem for p in (dm.patch_dir / "masks").glob("*.png"))
    assert written == sorted(expected) and len(written) == 5 * 4
    for name in written:
        np.testing.assert_array_equal(read_mask(dm.patch_dir / "masks" / f"{name}.png"), expected[name][1], err_msg=name)
        np.testing.assert_array_equal(read_image(dm.patch_dir / "images" / f"{name}.png"), expected[name][0], err_msg=name)


@pytest.mark.parametrize("ignore_index", [255, 99])
def test_a_scene_smaller_than_a_patch_is_padded_below_and_right(tmp_path, ignore_index):
    """A 40x52 scene in a 64 px patch: its pixels and polygons at the top left, unmoved; the
    image padded with 0 (black), the mask with ``ignore_index`` (iter_patches' pad_value=0 and
    pad_label=ignore_index in DotaDataModule._cut_scene)."""
    height, width = 40, 52
    image = np.random.default_rng(5).integers(40, 90, (height, width, 3)).astype(np.uint8)  # never 0, never a fill colour
    objects = [  # (corners, category, difficult, RGB fill): apart from each other, inside the scene
        (np.array([[3, 2], [24, 2], [24, 15], [3, 15]]), "plane", 0, (200, 10, 10)),
        (np.array([[33, 21], [48, 21], [48, 37], [33, 37]]), "small-vehicle", 1, (10, 200, 10)),
        (np.array([[12, 20], [20, 27], [12, 34], [4, 27]]), "harbor", 0, (10, 10, 200)),  # an oriented (rotated) box
    ]
    for corners, _, _, colour in objects:
        cv2.fillPoly(image, [corners.astype(np.int32)], colour)
    write_dota_scene(tmp_path / "d", "P0100", image, [o[:3] for o in objects])
    assert (tmp_path / "d" / "labelTxt" / "P0100.txt").read_text().splitlines()[:3] == [
        "imagesource:GoogleEarth", "gsd:0.5", "3 2 24 2 24 15 3 15 plane 0"]

    dm = make_dm(tmp_path / "d", tmp_path, ignore_index=ignore_index, val_fraction=0.0)
    assert "cut 1 scenes into 1 patches of 64 px" in dm.prepare_dataset()[0]
    with (dm.patch_dir / "index.csv").open() as handle:
        assert list(csv.DictReader(handle)) == [{"patch": "P0100__0_0", "source": "P0100", "y": "0", "x": "0"}]
    patch_image = cv2.imread(str(dm.patch_dir / "images" / "P0100__0_0.png"), cv2.IMREAD_UNCHANGED)[:, :, ::-1]
    patch_mask = cv2.imread(str(dm.patch_dir / "masks" / "P0100__0_0.png"), cv2.IMREAD_UNCHANGED)
    assert patch_image.shape == (64, 64, 3) and patch_image.dtype == np.uint8
    assert patch_mask.shape == (64, 64) and patch_mask.dtype == np.uint8

    # the scene, unmoved and unchanged, at the top left; the padding below and to the right
    np.testing.assert_array_equal(patch_image[:height, :width], image)
    assert (patch_image[height:] == 0).all() and (patch_image[:, width:] == 0).all()
    assert (patch_mask[height:] == ignore_index).all() and (patch_mask[:, width:] == ignore_index).all()
    scene_mask = patch_mask[:height, :width]
    assert ignore_index not in scene_mask

    # each polygon's class covers exactly the pixels painted in its colour, at its corners
    for corners, category, _, colour in objects:
        painted = (image == colour).all(axis=2)
        np.testing.assert_array_equal(scene_mask == DOTA_CLASSES.index(category), painted, err_msg=category)
        (x0, y0), (x1, y1) = corners.min(axis=0), corners.max(axis=0)
        assert painted[y0 : y1 + 1, x0 : x1 + 1].any() and not painted[:y0].any() and not painted[y1 + 1 :].any()
        assert not painted[:, :x0].any() and not painted[:, x1 + 1 :].any()
    assert (scene_mask[2:16, 3:25] == DOTA_CLASSES.index("plane")).all()  # the axis-aligned boxes, corners included
    assert (scene_mask[21:38, 33:49] == DOTA_CLASSES.index("small-vehicle")).all()
    assert scene_mask[27, 12] == DOTA_CLASSES.index("harbor") and scene_mask[21, 5] == 0  # in the diamond / beside it
    assert int((scene_mask == 0).sum()) == height * width - sum(int((image == o[3]).all(axis=2).sum()) for o in objects)

    # and training reads the same padded patch
    dm.setup("fit")
    loaded_image, loaded_mask = dm.train_dataset.load(0)
    np.testing.assert_array_equal(loaded_image, patch_image)
    np.testing.assert_array_equal(loaded_mask, patch_mask)


def test_datamodule_trains_on_patches_split_by_scene(tmp_path):
    write_dota(tmp_path / "d")
    dm = make_dm(tmp_path / "d", tmp_path, val_fraction=0.34)
    dm.prepare_data()
    dm.setup("fit")
    assert_samples(dm.train_dataset, 3, (64, 64), set(range(16)) | {255}, n=6)
    train_scenes = {n.split("__")[0] for n in dm.train_dataset.names}
    val_scenes = {n.split("__")[0] for n in dm.val_dataset.names}
    assert not train_scenes & val_scenes and len(val_scenes) == 1


def test_class_weights_match_independent_counts(tmp_path):
    from segkit.prepare import run_prepare

    write_dota(tmp_path / "d")
    cfg = compose_config("prepare", [
        "dataset=dota", f"data.root={tmp_path / 'd'}", f"data.cache_dir={tmp_path / 'work'}",
        "data.patch_size=64", "data.overlap=16", "data.num_workers=0", "data.val_fraction=0.0"])
    stats = run_prepare(cfg)
    dm = make_dm(tmp_path / "d", tmp_path, val_fraction=0.0)
    counts = np.zeros(16, np.int64)
    for path in sorted((dm.patch_dir / "masks").glob("*.png")):
        mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        counts += np.bincount(mask[mask != 255].ravel(), minlength=16)
    assert stats["pixel_counts"] == counts.tolist()
    saved = json.loads((tmp_path / "work" / "class_stats.json").read_text())
    present = counts > 0
    inverse = np.where(present, counts.sum() / np.maximum(counts, 1), 0.0)
    np.testing.assert_allclose(saved["weights"], inverse * present.sum() / inverse.sum(), rtol=1e-9)
    assert (tmp_path / "work" / "class_distribution.png").stat().st_size > 1000
    again = run_prepare(cfg)  # a second run does nothing
    assert again["pixel_counts"] == stats["pixel_counts"]


def test_augmentation_keeps_image_and_mask_aligned():
    dm = DotaDataModule()  # deliberately the dataset's own augmentations (90 degree turns, flips, colour jitter)
    assert dm.augment == DotaDataModule.defaults["augment"]
    assert_augmentation_keeps_alignment(dm, tolerance=0.0)


def test_check_lists_every_problem(tmp_path):
    write_dota(tmp_path / "d")
    (tmp_path / "d" / "labelTxt" / "P0001.txt").write_text("1 2 3 4 5 6 7 8 zeppelin 0\n1 2 3\n")
    (tmp_path / "d" / "images" / "P0002.png").unlink()
    problems = make_dm(tmp_path / "d", tmp_path).check()
    text = "\n".join(problems)
    assert len(problems) == 3, text
    assert "P0001.txt:1: unknown category 'zeppelin'" in text and "P0001.txt:2: expected" in text
    assert "P0002.txt: label file has no image" in text
    with pytest.raises(ValueError, match="P0002.txt: label file has no image"):
        make_dm(tmp_path / "d", tmp_path).prepare_dataset()


def test_real_dota_labels(tmp_path):
    folder = realdata("dota")
    counts = {}
    for label in sorted((folder / "labelTxt").glob("*.txt")):
        objects, problems = parse_dota_labels(label)
        assert problems == [], problems
        counts[label.stem] = len(objects)
    assert counts == {"P1234": 144, "P1888": 64, "P2709": 158}  # per SOURCES.md
    objects, _ = parse_dota_labels(folder / "labelTxt" / "P1888.txt")
    image = cv2.imread(str(folder / "images" / "P1888.png"))
    mask = rasterize_dota(objects, image.shape[:2], "P1888")
    assert set(np.unique(mask).tolist()) == {0, DOTA_CLASSES.index("large-vehicle"), DOTA_CLASSES.index("small-vehicle")}


def test_real_dota_scene_is_cut_into_a_padded_patch(tmp_path):
    folder = realdata("dota")
    root = tmp_path / "real"
    (root / "images").mkdir(parents=True)
    (root / "labelTxt").mkdir()
    (root / "images" / "P1888.png").write_bytes((folder / "images" / "P1888.png").read_bytes())
    (root / "labelTxt" / "P1888.txt").write_bytes((folder / "labelTxt" / "P1888.txt").read_bytes())
    dm = make_dm(root, tmp_path, patch_size=1024, overlap=200, val_fraction=0.0)
    assert "cut 1 scenes into 1 patches" in dm.prepare_dataset()[0]
    dm.setup("fit")
    image, mask = dm.train_dataset.load(0)
    assert image.shape == (1024, 1024, 3) and mask.shape == (1024, 1024)
    assert (mask[557:] == 255).all() and (mask[:, 712:] == 255).all()  # the 712x557 scene, padded
    assert set(np.unique(mask[:557, :712]).tolist()) == {0, 10, 11}


def test_an_interrupted_cut_is_continued_not_redone(tmp_path, monkeypatch):
    write_dota(tmp_path / "d")
    dm = make_dm(tmp_path / "d", tmp_path)
    real_cut = DotaDataModule._cut_scene

    def dies_on_the_second_scene(self, name, image_path, label_path):
        if name == "P0001":
            yield from list(real_cut(self, name, image_path, label_path))[:1]  # one patch written, then killed
            raise KeyboardInterrupt
        yield from real_cut(self, name, image_path, label_path)

    monkeypatch.setattr(DotaDataModule, "_cut_scene", dies_on_the_second_scene)
    with pytest.raises(KeyboardInterrupt):
        dm.prepare_dataset()
    assert not (dm.patch_dir / "index.csv").exists()  # nothing looks complete
    assert json.loads((dm.patch_dir / "manifest.json").read_text())["complete"] is False
    first_scene = sorted((dm.patch_dir / "images").glob("P0000__*.png"))
    stamps = {p: p.stat().st_mtime_ns for p in first_scene}

    monkeypatch.setattr(DotaDataModule, "_cut_scene", real_cut)
    messages = dm.prepare_dataset()
    assert "continued an interrupted cut: 1 scenes were already done" in messages[0]
    assert {p: p.stat().st_mtime_ns for p in first_scene} == stamps  # scene 1 not cut again
    fresh = make_dm(tmp_path / "d", tmp_path / "fresh")
    fresh.prepare_dataset()
    assert (dm.patch_dir / "index.csv").read_text() == (fresh.patch_dir / "index.csv").read_text()
    assert sorted(p.name for p in (dm.patch_dir / "masks").glob("*.png")) == sorted(p.name for p in (fresh.patch_dir / "masks").glob("*.png"))
