import pytest
import torch

from segkit.module import SegmentationModule


def blob_batch(num_classes, size=32, batch=4, seed=0):
    """Images whose pixel colour tells the class: learnable by overfitting."""
    g = torch.Generator().manual_seed(seed)
    n_labels = max(num_classes, 2)
    mask = torch.zeros(batch, size, size, dtype=torch.long)
    for b in range(batch):
        for label in range(1, n_labels):
            r, c = torch.randint(0, size - 10, (2,), generator=g).tolist()
            mask[b, r : r + 10, c : c + 8] = label
    palette = torch.rand(n_labels, 3, generator=g)
    image = palette[mask].permute(0, 3, 1, 2) + 0.05 * torch.randn(batch, 3, size, size, generator=g)
    return {"image": image, "mask": mask}


def make_module(num_classes, **kwargs):
    return SegmentationModule(
        model={"name": "unet", "encoder_name": "resnet18", "encoder_depth": 3, "decoder_channels": [32, 16, 8]},
        loss={"name": "bce_dice"},
        optimizer={"_target_": "torch.optim.Adam", "lr": 1e-2},
        num_classes=num_classes,
        **kwargs,
    )


@pytest.mark.parametrize("num_classes", [1, 3])
def test_overfits_one_batch(num_classes):
    torch.manual_seed(0)
    module = make_module(num_classes)
    batch = blob_batch(num_classes)
    optimizer = module.configure_optimizers()
    module.train()
    losses = []
    for _ in range(40):
        optimizer.zero_grad()
        loss = module.training_step(batch, 0)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    module.eval()
    with torch.no_grad():
        labels = module.predict_labels(module(batch["image"]))
    module.val_metrics.update(labels, batch["mask"])
    scores = module.val_metrics.compute()
    assert scores["dice"].item() > 0.9


def test_checkpoint_hyperparameters_rebuild_the_module():
    module = make_module(3, class_names=["bg", "x", "y"])
    rebuilt = SegmentationModule(**module.hparams)
    rebuilt.load_state_dict(module.state_dict())
    x = torch.randn(1, 3, 32, 32)
    module.eval(), rebuilt.eval()
    with torch.no_grad():
        assert torch.equal(module(x), rebuilt(x))
    assert rebuilt.val_metrics.class_names == ["bg", "x", "y"]


def test_scheduler_from_config():
    module = SegmentationModule(
        model={"name": "mobilenet_unet"},
        loss={"name": "bce_dice"},
        optimizer={"_target_": "torch.optim.SGD", "lr": 0.1},
        scheduler={
            "scheduler": {"_target_": "torch.optim.lr_scheduler.StepLR", "step_size": 2},
            "interval": "epoch",
        },
    )
    config = module.configure_optimizers()
    assert isinstance(config["optimizer"], torch.optim.SGD)
    assert isinstance(config["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.StepLR)
    assert config["lr_scheduler"]["interval"] == "epoch"


def test_channels_last_and_bf16_autocast_forward():
    module = make_module(1).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        fp32 = module(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = module(x)
    assert bf16.dtype == torch.bfloat16
    assert torch.allclose(fp32, bf16.float(), atol=0.15, rtol=0.1)
    loss = module.loss_fn(bf16, torch.zeros(2, 32, 32, dtype=torch.long))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def _metric_types(module):
    return {type(child).__name__ for child in module.modules()}


@pytest.mark.parametrize("num_classes", [1, 16])
def test_segmentation_modules_carry_no_classification_metrics(num_classes):
    # the model summary of a 16-class model listed BinaryAccuracy and BinaryF1Score
    module = make_module(num_classes)
    assert not {"BinaryAccuracy", "BinaryF1Score"} & _metric_types(module)
    assert not hasattr(module, "val_accuracy") and not hasattr(module, "val_f1")


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")  # validation_step outside a Trainer
def test_classification_stage_keeps_its_metrics_and_old_checkpoints_load():
    from torchmetrics.classification import BinaryAccuracy, BinaryF1Score

    model = {"name": "unet", "encoder_name": "resnet18", "encoder_depth": 3, "decoder_channels": [32, 16, 8],
             "classification_head": True}
    staged = SegmentationModule(model=model, loss={"name": "bce_dice"}, optimizer={"_target_": "torch.optim.Adam"},
                                task="classification")
    assert {"BinaryAccuracy", "BinaryF1Score"} <= _metric_types(staged)
    staged.eval()
    batch = blob_batch(1)
    staged.validation_step(batch, 0)
    assert 0.0 <= float(staged.val_accuracy.compute()) <= 1.0
    # a segmentation checkpoint written before the metrics were made conditional: its module
    # held both metrics (their states are not persistent): it loads strictly, and the next stage too
    old = make_module(1)
    old.val_accuracy, old.val_f1 = BinaryAccuracy(), BinaryF1Score()
    state = old.state_dict()
    assert not any(key.startswith(("val_accuracy", "val_f1")) for key in state)
    SegmentationModule(**old.hparams).load_state_dict(state)  # strict
