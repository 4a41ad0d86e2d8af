"""data.sampling=repeat_factor: images with rare classes drawn more often (LVIS repeat factors)."""

import json
import math
from collections import Counter

import numpy as np
import pytest

from segkit.data.sampling import RepeatFactorSampler, repeat_factors
from segkit.prepare import run_prepare
from tests.helpers import compose_config, make_datamodule, write_fixture


def test_repeat_factors_match_a_hand_computation():
    # 10 images: class 0 everywhere, class 1 in 5, class 2 in 1, class 3 in 2 (with class 1 in one of them)
    presence = [[0, 1]] * 4 + [[0, 1, 3], [0, 3], [0, 2], [0], [0], [0]]
    factors = repeat_factors(presence, threshold=0.3)
    # shares: f0 = 1, f1 = 0.5, f2 = 0.1, f3 = 0.2 -> r = max(1, sqrt(0.3 / f))
    r3, r2 = math.sqrt(0.3 / 0.2), math.sqrt(0.3 / 0.1)
    assert factors.tolist() == pytest.approx([1, 1, 1, 1, r3, r3, r2, 1, 1, 1], rel=1e-12)
    with pytest.raises(ValueError, match=r"data.repeat_threshold must be in \(0, 1\], got 0"):
        repeat_factors(presence, 0)


def test_each_image_is_drawn_about_its_factor_per_epoch_and_epochs_replay():
    factors = [1.0, 1.0, 2.5, 1.2, 3.0, 1.0]
    sampler = RepeatFactorSampler(factors, seed=7)
    assert len(sampler) == round(sum(factors))
    draws = Counter()
    epochs = 400
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        indices = [i for i, _ in sampler]
        assert len(indices) == len(sampler)
        draws.update(indices)
    rates = np.array([draws[i] / epochs for i in range(len(factors))])
    # floor(r) every epoch; the epoch's round(Σ frac) further draws go by each image's share of the fractions
    fraction = np.array(factors) - np.floor(factors)
    expected = np.floor(factors) + round(fraction.sum()) * fraction / fraction.sum()
    np.testing.assert_allclose(rates, expected, atol=0.08)
    assert all(draws[i] / epochs >= math.floor(f) for i, f in enumerate(factors))
    sampler.set_epoch(3)
    first = list(sampler)
    sampler.set_epoch(3)
    assert list(sampler) == first  # (seed, epoch) alone decide an epoch


def test_ddp_shares_merge_to_the_single_process_epoch():
    factors = [1.0, 2.0, 1.5, 1.0, 4.2, 1.0, 1.3]
    whole = RepeatFactorSampler(factors, seed=1)
    whole.set_epoch(2)
    expected = Counter(i for i, _ in whole)
    merged = Counter()
    for rank in range(2):
        part = RepeatFactorSampler(factors, seed=1)
        part.shard(rank, 2)
        part.set_epoch(2)
        merged.update(i for i, _ in part)
    total = sum(expected.values())
    assert sum(merged.values()) == 2 * len(part)  # both ranks run the same number of steps
    assert not expected - merged  # every draw of the single-process epoch is on some rank
    assert sum((merged - expected).values()) == 2 * len(part) - total  # and only the wrap-round padding is extra


def test_prepare_records_each_images_classes_and_training_repeats_the_rare_ones(tmp_path):
    write_fixture("oilseep", tmp_path / "o")
    cfg = compose_config("prepare", ["dataset=oilseep", f"data.root={tmp_path / 'o'}", f"data.cache_dir={tmp_path / 'w'}"])
    run_prepare(cfg)
    stats = json.loads((tmp_path / "w" / "class_stats.json").read_text())
    dm = make_datamodule("oilseep", tmp_path / "o", tmp_path, sampling="repeat_factor", cache_dir=str(tmp_path / "w"))
    dm.setup("fit")
    names = dm.train_dataset.names
    assert sorted(stats["presence"]) == sorted(names + dm.val_dataset.names)  # every image: any fold finds its own
    for dataset in (dm.train_dataset, dm.val_dataset):  # presence is what the mask holds
        for index, name in enumerate(dataset.names):
            assert stats["presence"][name] == sorted(np.unique(dataset.load_mask(index)).tolist())
    factors = repeat_factors([stats["presence"][n] for n in names], 0.3)
    assert len(dm._train_sampler) == round(factors.sum()) and factors.max() > 1.4  # seep7, in one training tile
    counts = {}
    for fold in range(3):  # each fold: its own statistics, beside the others'
        fold_dm = make_datamodule("oilseep", tmp_path / "o", tmp_path, sampling="repeat_factor", cache_dir=str(tmp_path / "w"),
                                  folds=3, fold=fold)
        fold_dm.prepare_data()
        fold_dm.setup("fit")
        assert fold_dm.class_stats_path.name == f"class_stats.fold{fold}of3.json"
        assert fold_dm.image_stats_path.name == f"image_stats.fold{fold}of3.json"
        assert len(fold_dm._train_sampler) >= len(fold_dm.train_dataset)
        fold_stats = json.loads(fold_dm.class_stats_path.read_text())
        expected = sum(np.bincount(fold_dm.train_dataset.load_mask(i).ravel(), minlength=8)
                       for i in range(len(fold_dm.train_dataset)))
        assert fold_stats["pixel_counts"] == expected.tolist()  # this fold's training pixels, not another's
        counts[fold] = tuple(fold_stats["pixel_counts"])
    assert len(set(counts.values())) == 3


def test_repeat_factor_sampling_without_class_statistics_says_what_to_run(tmp_path):
    write_fixture("oilseep", tmp_path / "o")
    dm = make_datamodule("oilseep", tmp_path / "o", tmp_path, sampling="repeat_factor")
    with pytest.raises(FileNotFoundError, match=r"data.sampling=repeat_factor reads the classes of each image from .*class_stats.json.*segkit-prepare"):
        dm.setup("fit")
    dm.prepare_data()  # what segkit-train runs first: it writes the statistics itself
    dm.setup("fit")
    assert dm.class_stats_path.is_file() and isinstance(dm._train_sampler, RepeatFactorSampler)
    with pytest.raises(ValueError, match="data.sampling must be one of uniform, repeat_factor, got 'rare'"):
        make_datamodule("oilseep", tmp_path / "o", tmp_path, sampling="rare")
    write_fixture("airbus", tmp_path / "a")
    airbus = make_datamodule("airbus", tmp_path / "a", tmp_path / "x", sampling="repeat_factor")
    with pytest.raises(ValueError, match="data.sampling=repeat_factor: Airbus has one class"):
        airbus.setup("fit")


def test_segkit_prepare_takes_a_recipe_and_prepares_what_its_training_reads(tmp_path):
    write_fixture("oilseep", tmp_path / "o")
    cfg = compose_config("prepare", ["experiment=oilseep_dice_ce", f"data.root={tmp_path / 'o'}", f"data.cache_dir={tmp_path / 'w'}"])
    assert cfg.data.sampling == "repeat_factor" and cfg.data.normalize.mean == "dataset"
    run_prepare(cfg)
    assert {p.name for p in (tmp_path / "w").iterdir()} >= {"class_stats.json", "image_stats.json", "class_distribution.png"}
