"""segkit-plan: the choices follow the fingerprint, the written plan composes and trains."""

import json

import cv2
import numpy as np
import pytest
import torch
import yaml
from hydra.utils import instantiate
from omegaconf import OmegaConf

from segkit.plan import Fingerprint, parse_budget, plan, run_plan
from segkit.stage import build_module
from tests.helpers import compose_config, run_segkit, write_fixture

#: what each fixture needs besides data.root (the fixtures are smaller than the real data)
FIXTURE_DATA = {
    "airbus": [], "carvana": [], "oilseep": [], "buildings": [],
    "dota": ["data.patch_size=64", "data.overlap=16"], "folder": ["data.num_classes=3"],
}


def _plan(tmp_path, dataset, *overrides, epochs=2):
    cfg = compose_config("plan", [f"dataset={dataset}", f"data.root={tmp_path / 'data'}", f"data.cache_dir={tmp_path / 'cache'}",
                                  f"output={tmp_path / 'plans' / 'experiment'}", f"epochs={epochs}", *overrides])
    result = run_plan(cfg, [o for o in overrides if o.startswith("data.")] + [f"data.root={tmp_path / 'data'}"])
    text = (tmp_path / "plans" / "experiment" / f"{cfg.name or dataset}_planned.yaml").read_text()
    return result, text, yaml.safe_load(text)


def _train_config(tmp_path, name, *overrides):
    return compose_config("train", [f"hydra.searchpath=[file://{tmp_path / 'plans'}]", f"experiment={name}_planned",
                                    f"data.root={tmp_path / 'data'}", f"data.cache_dir={tmp_path / 'cache'}", *overrides],
                          return_hydra_config=False)


def test_parse_budget():
    assert parse_budget("15min") == 900 and parse_budget("2h") == 7200 and parse_budget("1h30min") == 5400
    assert parse_budget("90s") == 90 and parse_budget(120) == 120
    assert parse_budget("00:15:00") == 900 and parse_budget("00:01:30:00") == 5400  # as trainer.max_time
    for bad in ("soon", "15 parsecs", "-5min", "0s", "15mins", "1h30"):
        with pytest.raises(ValueError, match="budget="):
            parse_budget(bad)
    with pytest.raises(ValueError, match=r"budget=15 would be 15 seconds: write the unit \(budget=15min"):
        parse_budget(15)


@pytest.mark.parametrize("dataset", sorted(FIXTURE_DATA))
def test_each_fixture_is_planned_from_its_fingerprint_and_the_plan_composes(dataset, tmp_path):
    write_fixture(dataset, tmp_path / "data")
    result, text, planned = _plan(tmp_path, dataset, *FIXTURE_DATA[dataset])
    fp = result["plan"].fingerprint
    data = planned["data"]
    assert planned["trainer"]["max_time"] is None  # epochs=2 asked, no budget: no time limit
    # every choice is explained: each planned key carries its reason (augment: the line above it)
    keys = [line for line in text.splitlines() if line.startswith("  ") and not line.lstrip().startswith(("#", "-"))
            and not line.startswith("    ") and not line.rstrip().endswith(":")]
    assert len(keys) >= 8
    for line in keys:
        assert "   # " in line, f"a choice without its reason: {line!r}"
    if fp.dtype == "uint16":
        assert data["normalize"]["mean"] == "dataset" and data["normalize"]["max_pixel_value"] == 65535.0
    else:
        assert data["normalize"]["max_pixel_value"] == 255.0
    augment = data["augment"]
    if dataset in ("airbus", "dota", "buildings", "oilseep"):
        assert {"vflip", "rotate90", "rotate"} <= set(augment)  # overhead: orientation means nothing
    else:
        assert "rotate" not in augment and "vflip" not in augment and "hflip" in augment
    rare = min(p for p in fp.presence[1:] if p > 0) < 0.3
    assert data["sampling"] == ("repeat_factor" if rare else "uniform")
    assert planned["defaults"][1] == {"override /loss": "focal_tversky" if fp.foreground_share < 0.01 else "dice_ce"}
    cfg = _train_config(tmp_path, dataset)  # composes as segkit-train composes it
    assert cfg.data.batch_size == data["batch_size"] and cfg.model.encoder_name == "resnet18"
    assert cfg.trainer.max_epochs == 2 and cfg.loss.name in ("dice_ce", "focal_tversky")
    fingerprint = json.loads((tmp_path / "plans" / "experiment" / f"{dataset}_planned.fingerprint.json").read_text())
    assert fingerprint["train_images"] == fp.train_images and fingerprint["dtype"] == fp.dtype
    # and trains a step: a batch of the planned pipeline through the planned model, loss and backward
    datamodule = instantiate(OmegaConf.to_container(cfg.data, resolve=True) | {"num_workers": 0}, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("fit")
    batch = datamodule.prepare_batch(next(iter(datamodule.train_dataloader())))
    module = build_module(cfg, datamodule)
    loss = module.loss_fn(module(batch["image"]), batch["mask"])
    loss.backward()
    assert torch.isfinite(loss) and any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def _sparse_folder(root, size=320, n=10):
    """Index masks with one small object of class 1 in one image: ~0.05% foreground."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        cv2.imwrite(str(root / "images" / f"img{i}.png"), rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        mask = np.zeros((size, size), np.uint8)
        if i in (0, 5):
            mask[40:47, 60:67] = 1
        cv2.imwrite(str(root / "masks" / f"img{i}.png"), mask)


def test_sparse_foreground_gets_focal_tversky_and_oversampling_and_large_images_crops(tmp_path):
    _sparse_folder(tmp_path / "data")
    result, text, planned = _plan(tmp_path, "folder", "data.num_classes=2", "data.split=list", "data.val_list=[img9]",
                                  "imagery=microscopy", "name=sparse")
    fp = result["plan"].fingerprint
    assert fp.foreground_share < 0.01 and fp.object_sizes["class1"]["median"] == 49
    assert {"override /loss": "focal_tversky"} in planned["defaults"]
    crop = planned["data"]["augment"]["crop"]
    assert crop["type"] == "ForegroundCrop" and crop["height"] == 256 and crop["foreground_share"] == 0.5
    assert fp.presence[1] == pytest.approx(2 / 9)
    assert planned["data"]["sampling"] == "repeat_factor"  # class1 in 2 of the 9 training images
    assert "rotate" in planned["data"]["augment"]  # microscopy, as said
    assert json.loads((tmp_path / "plans" / "experiment" / "sparse_planned.fingerprint.json").read_text())["imagery"] == "microscopy"


def test_a_plan_trains_from_the_command_it_prints(tmp_path):
    write_fixture("oilseep", tmp_path / "data")
    result, _, _ = _plan(tmp_path, "oilseep")
    command = result["command"]
    assert command.startswith(f"segkit-train --config-dir {tmp_path / 'plans'} experiment=oilseep_planned data.root=")
    args = command.split()[1:]
    run = run_segkit("segkit-train", *args, "trainer.fast_dev_run=1", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["loss"]["name"] == "dice_ce" and saved["data"]["sampling"] in ("uniform", "repeat_factor")
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["segkit"]["preprocessing"][
        "normalize"]["mean"] != "dataset"  # the z-score statistics were computed and recorded as numbers


def test_the_budget_becomes_epochs_from_timed_steps():
    fp = Fingerprint(dataset="oilseep", train_images=100, val_images=20, sampled=100, heights=[256] * 100,
                     widths=[256] * 100, channels=1, dtype="uint16", channel_mean=[3e4], channel_std=[1e4],
                     class_names=["background", "a"], pixel_frequencies=[0.9, 0.1], presence=[1.0, 0.5],
                     empty_share=0.0, imagery="overhead")
    timed = []

    def seconds(batch, h, w):
        timed.append((batch, h, w))
        return 2.0

    p = plan(fp, "cpu", 900, "x", seconds_per_step=seconds)
    assert timed == [(8, 256, 256)] and p.value("trainer.max_time") == "00:00:15:00"
    # epochs=N without a budget (segkit-plan passes time_limit=False): no silent 15-minute stop
    assert plan(fp, "cpu", 900, "x", epochs=3, time_limit=False).value("trainer.max_time") is None
    # 13 steps of 2 s + validation 20 images x 2 s / 8 / 3 -> 27.67 s an epoch; 90% of 900 s
    assert p.value("trainer.max_epochs") == int(0.9 * 900 // (13 * 2 + 20 * 2 / 8 / 3))
    with pytest.raises(ValueError, match="device=tpu: choose cpu or gpu"):
        plan(fp, "tpu", 900, "x", epochs=3)


def test_an_existing_plan_is_not_overwritten(tmp_path):
    write_fixture("oilseep", tmp_path / "data")
    _plan(tmp_path, "oilseep")
    with pytest.raises(FileExistsError, match="oilseep_planned.yaml"):
        _plan(tmp_path, "oilseep")
    (tmp_path / "plans" / "experiment" / "oilseep_planned.yaml").unlink()  # the fingerprint beside it is kept too
    with pytest.raises(FileExistsError, match="oilseep_planned.fingerprint.json"):
        _plan(tmp_path, "oilseep")


def test_grayscale_stored_as_rgb_is_pointed_out(tmp_path):
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "masks").mkdir()
    for i in range(5):
        gray = np.random.default_rng(i).integers(0, 256, (64, 64), dtype=np.uint8)
        cv2.imwrite(str(tmp_path / "data" / "images" / f"s{i}.png"), np.dstack([gray] * 3))
        cv2.imwrite(str(tmp_path / "data" / "masks" / f"s{i}.png"), (gray > 128).astype(np.uint8))
    _, text, _ = _plan(tmp_path, "folder", "data.num_classes=2")
    assert "# NOTE: every image read has three equal channels (grayscale saved as RGB): data.in_channels=1" in text
