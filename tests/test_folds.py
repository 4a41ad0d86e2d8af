"""K-fold cross-validation over split groups (data.folds, data.fold) and data.split_by."""

import math
from collections import Counter

import numpy as np
import pytest

from segkit.data.splits import group_kfold
from segkit.sweep import fold_summary
from tests.helpers import TINY_TRAIN, make_datamodule, run_segkit, write_fixture


def random_groups(n=60, n_groups=17, seed=0):
    rng = np.random.default_rng(seed)
    groups = [f"g{int(g):02d}" for g in rng.integers(0, n_groups, n)]
    return [f"item{i:03d}" for i in range(n)], groups


@pytest.mark.parametrize("folds", [2, 3, 5])
def test_folds_validate_every_item_once_keep_groups_whole_and_balance(folds):
    keys, groups = random_groups()
    seen = Counter()
    sizes = []
    for fold in range(folds):
        train, val = group_kfold(keys, groups, folds, fold, seed=42)
        assert sorted(train + val) == list(range(len(keys)))
        assert not {groups[i] for i in train} & {groups[i] for i in val}, "a group on both sides"
        seen.update(val)
        sizes.append(len(val))
    assert all(seen[i] == 1 for i in range(len(keys))) and len(seen) == len(keys)
    assert max(sizes) - min(sizes) <= max(Counter(groups).values())  # greedy largest-first balance
    assert group_kfold(keys, groups, folds, 1 % folds, seed=42) == group_kfold(list(keys), list(groups), folds, 1 % folds, seed=42)
    # the folds depend on the items, not their order
    order = np.random.default_rng(1).permutation(len(keys))
    shuffled = group_kfold([keys[i] for i in order], [groups[i] for i in order], folds, 0, seed=42)[1]
    assert sorted(keys[order[i]] for i in shuffled) == [keys[i] for i in group_kfold(keys, groups, folds, 0, seed=42)[1]]


def test_stratified_folds_share_out_each_stratum():
    keys = [f"k{i:03d}" for i in range(100)]
    strata = [1] * 20 + [0] * 80  # 20 images with ships
    counts = [sum(strata[i] for i in group_kfold(keys, keys, 5, fold, seed=3, strata=strata)[1]) for fold in range(5)]
    assert counts == [4, 4, 4, 4, 4]


def test_another_seed_draws_other_folds():
    keys, groups = random_groups()
    assert group_kfold(keys, groups, 5, 0, seed=1)[1] != group_kfold(keys, groups, 5, 0, seed=2)[1]


@pytest.mark.parametrize("folds, fold, message", [
    (1, 0, "data.folds must be at least 2"),
    (5, 5, r"data.fold must be one of 0..4 for data.folds=5, got 5"),
    (30, 0, r"data.folds=30 needs at least 30 split groups, the data has 16"),
])
def test_fold_settings_that_cannot_work_are_refused(folds, fold, message):
    keys, groups = random_groups()
    with pytest.raises(ValueError, match=message):
        group_kfold(keys, groups, folds, fold, seed=0)


def test_oilseep_folds_hold_out_whole_scenes_and_cover_every_tile(tmp_path):
    write_fixture("oilseep", tmp_path / "o")  # 10 tiles of 3 scenes
    validated = []
    for fold in range(3):
        dm = make_datamodule("oilseep", tmp_path / "o", tmp_path / str(fold), folds=3, fold=fold)
        dm.setup("fit")
        scenes = {name.split(".")[0] for name in dm.val_dataset.names}
        assert len(scenes) == 1 and not scenes & {n.split(".")[0] for n in dm.train_dataset.names}
        validated += dm.val_dataset.names
    assert sorted(validated) == sorted(p.name for p in (tmp_path / "o" / "train_images_256").glob("*.tif"))
    by_tile = make_datamodule("oilseep", tmp_path / "o", tmp_path / "item", folds=5, fold=0, split_by="item")
    by_tile.setup("fit")
    assert len(by_tile.val_dataset) == 2  # 10 tiles in 5 folds, scenes ignored


def test_airbus_folds_keep_ship_and_ship_free_images_in_every_fold(tmp_path):
    write_fixture("airbus", tmp_path / "a")
    for fold in range(2):
        dm = make_datamodule("airbus", tmp_path / "a", tmp_path / str(fold), folds=2, fold=fold, val_background_ratio=1.0)
        dm.setup("fit")
        has_mask = [m is not None for m in dm.val_dataset.mask_paths]
        assert any(has_mask) and not all(has_mask)


def test_settings_that_choose_validation_twice_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"data.folds=1: K-fold cross-validation needs data.folds of at least 2"):
        make_datamodule("oilseep", tmp_path, tmp_path, folds=1)
    with pytest.raises(ValueError, match=r"data.folds=3 data.fold=3: data.fold must be one of 0..2"):
        make_datamodule("oilseep", tmp_path, tmp_path, folds=3, fold=3)
    with pytest.raises(ValueError, match=r"data.fold=2 chooses a fold, but data.folds is not set: add data.folds=K"):
        make_datamodule("oilseep", tmp_path, tmp_path, fold=2)
    with pytest.raises(ValueError, match=r"data.split_by must be one of group, item, got 'scene'"):
        make_datamodule("oilseep", tmp_path, tmp_path, split_by="scene")
    write_fixture("buildings", tmp_path / "b")
    dm = make_datamodule("buildings", tmp_path / "b", tmp_path, folds=2, split_file=str(tmp_path / "split.json"))
    with pytest.raises(ValueError, match=r"data.split_file=.* and data.folds=2 both choose the validation images"):
        dm.setup("fit")
    write_fixture("folder", tmp_path / "f")
    dm = make_datamodule("folder", tmp_path / "f", tmp_path, folds=2, split="list", val_list=["tile_000"])
    with pytest.raises(ValueError, match=r"data.folds=2 splits the images itself: use it with data.split=ratio, not data.split=list"):
        dm.setup("fit")


def test_fold_summary_gives_mean_and_spread_per_setting():
    rows = [{"overrides": f"data.fold={f} optimizer.lr={lr}", "best": b, "monitor": "val/dice"}
            for lr, scores in (("0.001", [0.8, 0.7, 0.9]), ("0.01", [0.5, 0.6, 0.55])) for f, b in enumerate(scores)]
    rows.append({"overrides": "optimizer.lr=0.1", "best": 0.3, "monitor": "val/dice"})  # not a fold run
    lines = fold_summary(rows)
    assert lines[1] == "## Cross-validation"
    table = [line for line in lines if line.startswith("| `")]
    assert table[0] == f"| `optimizer.lr=0.001` | 0,1,2 | 0.8000 | {np.std([0.8, 0.7, 0.9], ddof=1):.4f} | 0.7000 | 0.9000 |"
    assert table[1].startswith("| `optimizer.lr=0.01` | 0,1,2 | 0.5500 |")
    assert len(table) == 2
    assert fold_summary([{"overrides": "optimizer.lr=0.1", "best": 0.3, "monitor": "val/dice"}]) == []
    one = fold_summary([{"overrides": "data.fold=0", "best": 0.3, "monitor": "val/dice"}])
    assert one[-1].startswith("| `(none)` | 0 | 0.3000 | nan |") and math.isnan(float(one[-1].split("|")[4]))


def test_cli_trains_every_fold_and_the_summary_gives_their_spread(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_segkit("segkit-train", "-m", "data.folds=2", "data.fold=0,1", "trainer.fast_dev_run=1",
                        f"hydra.sweep.dir={sweep}", *TINY_TRAIN, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = (sweep / "summary.md").read_text()
    assert "## Cross-validation" in summary and "| 0,1 |" in summary
    assert "cross-validation of val/dice (overrides | folds | mean | std | min | max):" in result.stdout
    assert "| `(none)` | 0,1 |" in result.stdout
    logs = [(sweep / str(run) / "train.log").read_text() for run in (0, 1)]
    assert "fold 0 of 2" in logs[0] and "fold 1 of 2" in logs[1]


def test_a_sweep_that_stops_at_a_failed_job_keeps_the_summary_of_the_runs_before_it(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_segkit("segkit-train", "-m", "data.folds=3", "data.fold=0,5", "trainer.fast_dev_run=1",
                        f"hydra.sweep.dir={sweep}", *TINY_TRAIN, cwd=tmp_path)
    assert result.returncode != 0
    assert "segkit-train: error: data.folds=3 data.fold=5: data.fold must be one of 0..2" in result.stderr
    summary = (sweep / "summary.md").read_text()
    assert "1 runs, best first" in summary and "## Cross-validation" in summary  # fold 0, written when it ended
