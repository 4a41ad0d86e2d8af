"""Staged training, LR finder, experiments and resume."""

import csv
import json
from functools import partial

import pytest
import torch

from segkit.recipes import Stage, parse_stages, stage_config
from segkit.train import run_training
from tests.helpers import TINY_TRAIN, compose_config, write_fixture

TINY = [*TINY_TRAIN, "data.num_workers=0"]
compose_train = partial(compose_config, "train")


def encoder_weights(state_dict):
    return {k: v for k, v in state_dict.items()
            if k.startswith("net.net.encoder.") and "running_" not in k and "num_batches_tracked" not in k}


def test_two_stage_recipe_transfers_weights_and_uses_the_lr_finder(tmp_path):
    stages = [
        {"name": "classify", "task": "classification", "epochs": 1, "background_ratio": 0.7,
         "lr_find": {"num_training": 20, "early_stop_threshold": None}},
        {"name": "segment", "epochs": 1, "background_ratio": 0.1, "lr": 0.0},  # lr 0: weights must stay
    ]
    cfg = compose_train([*TINY, "model.classification_head=true", "trainer.precision=32-true", "logger=csv",
                         f"paths.run_dir={tmp_path / 'run'}"])
    cfg.recipe = {"stages": stages}
    summary = run_training(cfg)
    run = tmp_path / "run"
    with (run / "stages.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["name"] for r in rows] == ["classify", "segment"] and rows[0]["task"] == "classification"
    assert rows[0]["monitor"] == "val/acc" and rows[1]["monitor"] == "val/dice"
    assert (run / "stages" / "00_classify" / "lr_find.png").is_file()
    first = torch.load(rows[0]["checkpoint"], map_location="cpu", weights_only=False)
    found_lr = float(rows[0]["lr"])
    assert found_lr != cfg.optimizer.lr  # the finder's, not the configured one
    assert first["optimizer_states"][0]["param_groups"][0]["initial_lr"] == pytest.approx(found_lr)
    second = torch.load(run / "stages" / "01_segment" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    before, after = encoder_weights(first["state_dict"]), encoder_weights(second["state_dict"])
    assert before and before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key
    assert summary["stages"][1]["name"] == "segment" and "val/dice" in summary["final"]
    assert json.loads((run / "metrics.json").read_text())["stages"][0]["name"] == "classify"


def test_stage_settings_reach_the_datamodule_and_the_labels():
    cfg = compose_train([*TINY, "model.classification_head=true"])
    stage_cfg, data = stage_config(cfg, Stage(name="c", task="classification", epochs=5, image_size=96, background_ratio=0.7))
    assert data == {"image_size": 96, "background_ratio": 0.7}
    assert stage_cfg.trainer.max_epochs == 5 and stage_cfg.monitor.metric == "val/acc"
    assert stage_cfg.callbacks.model_checkpoint.monitor == "val/acc"
    from hydra.utils import instantiate

    dm = instantiate(cfg.data, **data, _convert_="all")
    dm.prepare_data()
    dm.setup("fit")
    sampler = dm.train_dataloader().sampler
    assert sampler.ratio == 0.7 and len(sampler) == len(sampler.positives) + round(0.7 * len(sampler.negatives))
    from segkit.stage import build_module

    module = build_module(cfg, task="classification")
    masks = torch.zeros(3, 4, 4, dtype=torch.long)
    masks[1, 0, 0] = 1
    assert module.image_labels(masks).tolist() == [0.0, 1.0, 0.0]


def test_recipe_errors_are_clear():
    with pytest.raises(ValueError, match="recipe stage 0: unknown key\\(s\\) epoch"):
        parse_stages({"stages": [{"name": "a", "epoch": 3}]})
    with pytest.raises(ValueError, match="give lr or lr_find, not both"):
        parse_stages({"stages": [{"name": "a", "lr": 0.1, "lr_find": True}]})
    cfg = compose_train(["model=segnet"])
    from segkit.stage import build_module

    with pytest.raises(ValueError, match="needs a classification head.*model.classification_head=true"):
        build_module(cfg, task="classification")


def _fixture_for(dataset, root, tmp_path):
    """Write ``dataset``'s registry fixture at ``root``; the overrides its experiment needs on it."""
    write_fixture(dataset, root)
    return {
        "airbus": ["data.image_size=64"],
        "carvana": ["data.image_size=[128,128]"],
        "oilseep": [],
        "buildings": [],
        "dota": ["data.patch_size=64", "data.overlap=16"],
    }[dataset]


@pytest.mark.parametrize("experiment, dataset", [
    ("airbus_staged", "airbus"), ("carvana_segnet", "carvana"), ("oilseep_unet", "oilseep"),
    ("buildings_unet", "buildings"), ("dota_unet", "dota"),
])
def test_every_experiment_runs_on_its_fixture(tmp_path, experiment, dataset):
    root = tmp_path / dataset
    extra = _fixture_for(dataset, root, tmp_path)
    overrides = [f"experiment={experiment}", f"data.root={root}", "data.num_workers=0", "data.batch_size=2",
                 "trainer.fast_dev_run=1", f"paths.run_dir={tmp_path / 'run'}", "logger=csv", *extra]
    if experiment == "airbus_staged":  # the real stage sizes (256..768) on 64 px fixture images: keep them small
        overrides += ['recipe.stages=[{name: c, task: classification, epochs: 1, image_size: 64, background_ratio: 0.7, lr_find: true},'
                      '{name: s, epochs: 1, image_size: 96, background_ratio: 0.1}]']
    cfg = compose_train(overrides)
    if experiment == "dota_unet":  # weights: auto needs the class statistics first
        from segkit.prepare import run_prepare

        prep = compose_config("prepare", [f"dataset={dataset}", f"data.root={root}", *extra])
        run_prepare(prep)
    summary = run_training(cfg)
    assert (tmp_path / "run" / "metrics.json").is_file()
    assert summary["final"] is not None


def test_experiment_configs_say_what_the_seeds_did():
    carvana = compose_train(["experiment=carvana_segnet"])
    assert carvana.optimizer._target_ == "torch.optim.Adam" and carvana.optimizer.lr == 1e-4
    assert carvana.loss.name == "bce_dice" and carvana.model.name == "segnet"
    assert carvana.callbacks.early_stopping.min_delta == 1e-4
    airbus = compose_train(["experiment=airbus_staged"])
    stages = parse_stages(airbus.recipe)
    assert [(s.task, s.epochs, s.image_size, s.background_ratio) for s in stages] == [
        ("classification", 5, 256, 0.7), ("segmentation", 10, 256, 0.1), ("segmentation", 8, 384, 0.1),
        ("segmentation", 2, 512, 0.1), ("segmentation", 2, 768, 0.1)]
    assert all(s.lr_find for s in stages) and airbus.loss.name == "unified_focal" and airbus.loss.variant == "symmetric"
    assert compose_train(["experiment=oilseep_unet"]).loss.name == "focal_tversky"
    dota = compose_train(["experiment=dota_unet"])
    assert dota.loss.name == "weighted_ce" and dota.loss.weights == "auto" and dota.module.ignore_index == 255
