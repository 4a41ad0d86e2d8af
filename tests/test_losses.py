"""Every loss against a numpy transcription of its equation, and its properties."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segkit.losses import LOSSES, build_loss
from tests.fixtures import loss_reference as ref

ALL = sorted(LOSSES)
PARAMS = {"weighted_ce": {"weights": None}}  # a loss takes numbers; `auto` is resolved by segkit.stage (tested below)


def make(name, num_classes, **kwargs):
    return build_loss(name, num_classes=num_classes, **{**PARAMS.get(name, {}), **kwargs})


def sample(num_classes, seed=0, shape=(2, 5, 6), scale=2.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape[0], num_classes, *shape[1:], generator=g, dtype=torch.float64) * scale
    target = torch.randint(0, max(num_classes, 2), shape, generator=g)
    return logits, target


def value(loss, logits, target):
    return loss(logits, target).item()


# -------------------------------------------------------------- hand values
def test_unified_focal_by_hand():
    # two pixels, p = 0.5 each, targets [1, 0]; paper defaults λ=0.5, δ=0.6, γ=0.5
    logits = torch.zeros(1, 1, 1, 2)
    target = torch.tensor([[[1, 0]]])
    focal = (0.6 * 0.5**0.5 * math.log(2) + 0.4 * 0.5**0.5 * math.log(2)) / 2
    # each class: tp = 0.5, fn = 0.5, fp = 0.5 → mTI = 0.5 / (0.5 + 0.6·0.5 + 0.4·0.5) = 0.5
    tversky_sym = 0.5**0.5
    tversky_asym = (0.5 + 0.5**0.5) / 2  # background term not enhanced
    focal_asym = (0.6 * math.log(2) + 0.4 * 0.5**0.5 * math.log(2)) / 2
    sym = build_loss("unified_focal", num_classes=1)
    asym = build_loss("unified_focal", num_classes=1, variant="asymmetric")
    assert value(sym, logits, target) == pytest.approx(0.5 * focal + 0.5 * tversky_sym, rel=1e-6)
    assert value(asym, logits, target) == pytest.approx(0.5 * focal_asym + 0.5 * tversky_asym, rel=1e-6)


def test_asymmetric_unified_focal_by_hand_with_unequal_classes():
    # pixel 1: p = 0.75, target 1; pixel 2: p = 0.5, target 0
    logits = torch.tensor([[[[math.log(3.0), 0.0]]]])
    target = torch.tensor([[[1, 0]]])
    # focal: foreground not suppressed, background suppressed by (1 − p_0)^γ
    focal = (0.6 * -math.log(0.75) + 0.4 * 0.5**0.5 * -math.log(0.5)) / 2
    # class 1: tp 0.75, fn 0.25, fp 0.5; class 0 (p_0 = [0.25, 0.5]): tp 0.5, fn 0.5, fp 0.25
    mti1 = 0.75 / (0.75 + 0.6 * 0.25 + 0.4 * 0.5)
    mti0 = 0.5 / (0.5 + 0.6 * 0.5 + 0.4 * 0.25)
    tversky = ((1 - mti0) + (1 - mti1) ** 0.5) / 2  # only the foreground enhanced
    asym = build_loss("unified_focal", num_classes=1, variant="asymmetric")
    assert value(asym, logits, target) == pytest.approx(0.5 * focal + 0.5 * tversky, rel=1e-6)


def test_focal_tversky_by_hand():
    logits = torch.zeros(1, 1, 1, 2)
    target = torch.tensor([[[1, 0]]])
    # tp = fn = fp = 0.5 → TI = (0.5 + 1) / (0.5 + 0.7·0.5 + 0.3·0.5 + 1) = 0.75
    assert value(build_loss("focal_tversky", num_classes=1), logits, target) == pytest.approx(0.25**0.75, rel=1e-6)


def test_weighted_ce_by_hand():
    logits = torch.tensor([[[[0.0]], [[math.log(3.0)]]]])  # p = [0.25, 0.75]
    target = torch.tensor([[[0]]])
    loss = build_loss("weighted_ce", num_classes=2, weights=[2.0, 1.0])
    assert value(loss, logits, target) == pytest.approx(math.log(4.0), rel=1e-6)


# --------------------------------------------------------- numpy references
def nnunet_dice_ce(logits, target, smooth=1e-5, batch_dice=True, include_background=False, ignore=None):
    """nnU-Net's DC_and_CE_loss (MemoryEfficientSoftDiceLoss + CE), written out in numpy, plus 1."""
    probs, g, valid = ref.probs_and_onehot(logits, target, ignore)
    probs = probs * valid
    first = 0 if include_background and logits.shape[1] > 1 else 1
    axes = (0, 2, 3) if batch_dice else (2, 3)
    tp = (probs * g).sum(axis=axes)[..., first:]
    fp = (probs * (1 - g) * valid).sum(axis=axes)[..., first:]
    fn = ((1 - probs) * g).sum(axis=axes)[..., first:]
    dc = (2 * tp + smooth) / np.clip(2 * tp + fp + fn + smooth, 1e-8, None)
    return ref.weighted_ce(logits, target, None, ignore) + 1.0 - dc.mean()


def compound_default(logits, target, ignore=None):
    """loss=compound with its default terms: CE + smp Dice."""
    return ref.weighted_ce(logits, target, None, ignore) + ref.dice(logits, target, ignore)


REFERENCES = {
    "unified_focal": (ref.unified_focal, [{}, {"variant": "asymmetric"}, {"per_image": True},
                                          {"variant": "asymmetric", "per_image": True, "weight": 0.2, "delta": 0.7, "gamma": 0.3}]),
    "focal_tversky": (ref.focal_tversky, [{}, {"alpha": 0.5, "beta": 0.5, "gamma": 2.0, "reduction": "sum"}]),
    "weighted_ce": (ref.weighted_ce, [{"weights": None}, {"weights": "per-class"}]),
    "bce_dice": (ref.bce_dice, [{}, {"bce_weight": 0.1, "dice_weight": 2.0}]),
    "dice": (ref.dice, [{}]),
    "jaccard": (ref.jaccard, [{}]),
    "focal": (ref.focal, [{}, {"gamma": 1.0}]),
    "lovasz": (ref.lovasz, [{}]),
    "dice_ce": (nnunet_dice_ce, [{}, {"batch_dice": False}, {"include_background": True}]),
    "ce": (ref.weighted_ce, [{}]),
    "compound": (compound_default, [{}]),
}
REF_ARGS = {"variant": "variant", "weight": "lam", "delta": "delta", "gamma": "gamma", "per_image": "per_image",
            "alpha": "alpha", "beta": "beta", "reduction": "reduction", "weights": "weights",
            "bce_weight": "bce_weight", "dice_weight": "dice_weight", "batch_dice": "batch_dice",
            "include_background": "include_background"}


def test_every_registered_loss_has_a_reference():
    assert set(REFERENCES) == set(LOSSES)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("num_classes", [1, 4])
@pytest.mark.parametrize("ignore", [None, 255])
def test_matches_numpy_reference(name, num_classes, ignore):
    function, variants = REFERENCES[name]
    for seed, params in enumerate(variants):
        params = dict(params)
        if params.get("weights") == "per-class":
            params["weights"] = [0.5 + i for i in range(max(num_classes, 2))]
        logits, target = sample(num_classes, seed=seed)
        if ignore is not None:
            target[0, :2] = ignore
        ours = build_loss(name, num_classes=num_classes, ignore_index=ignore, **params)(logits, target).item()
        theirs = function(logits.numpy(), target.numpy(), ignore=ignore, **{REF_ARGS[k]: v for k, v in params.items()})
        tolerance = 1e-5 if name == "lovasz" else 1e-6  # smp's Lovász computes in float32
        assert ours == pytest.approx(theirs, rel=tolerance, abs=1e-9), (name, params)


# --------------------------------------------------------------- properties
def perfect_logits(target, num_classes, margin=12.0):
    if num_classes == 1:
        return ((target.double() * 2 - 1) * margin).unsqueeze(1)
    return torch.nn.functional.one_hot(target, num_classes).permute(0, 3, 1, 2).double() * 2 * margin - margin


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("num_classes", [1, 3])
def test_loss_falls_to_its_minimum_as_predictions_improve(name, num_classes):
    logits, target = sample(num_classes, seed=3)
    best = perfect_logits(target, num_classes)
    loss = make(name, num_classes)
    values = [value(loss, (1 - t) * logits + t * best, target) for t in (0.0, 0.5, 1.0)]
    assert values[0] > values[1] >= values[2]  # a hinge (Lovász) may reach 0 before t = 1
    assert values[2] < 0.02 and values[2] >= -1e-9


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("num_classes", [1, 3])
def test_gradcheck_float64(name, num_classes):
    logits, target = sample(num_classes, seed=5, shape=(2, 3, 3), scale=1.0)
    logits.requires_grad_(True)
    loss = make(name, num_classes)
    if name == "lovasz":  # smp's Lovász runs in float32: coarser steps, looser tolerance
        assert torch.autograd.gradcheck(lambda x: loss(x, target).double(), (logits,), eps=1e-3, atol=2e-3, rtol=1e-2)
    else:
        assert torch.autograd.gradcheck(lambda x: loss(x, target), (logits,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("num_classes", [1, 3])
def test_empty_ground_truth_gives_finite_loss_and_gradient(name, num_classes):
    logits, _ = sample(num_classes, seed=6)
    logits.requires_grad_(True)
    target = torch.zeros(2, 5, 6, dtype=torch.long)
    out = make(name, num_classes)(logits, target)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("num_classes", [1, 3])
def test_extreme_logits_under_bf16_autocast_stay_finite(name, num_classes):
    _, target = sample(num_classes, seed=7)
    signs = torch.randint(0, 2, (2, num_classes, 5, 6), generator=torch.Generator().manual_seed(7)) * 2 - 1
    weights = torch.nn.Parameter(torch.ones(1))
    loss = make(name, num_classes)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = (signs.float() * 50.0 * weights).to(torch.bfloat16)
        out = loss(logits, target)
    out.backward()
    assert out.dtype == torch.float32
    assert torch.isfinite(out) and torch.isfinite(weights.grad).all()


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("num_classes", [1, 3])
def test_ignored_pixels_change_nothing(name, num_classes):
    logits, target = sample(num_classes, seed=8, shape=(2, 6, 6))
    ignored = target.clone()
    ignored[:, :, 3:] = 255
    wild = logits.clone()
    wild[..., 3:] = torch.randn_like(wild[..., 3:]) * 30
    loss = make(name, num_classes, ignore_index=255)
    assert value(loss, logits, ignored) == pytest.approx(value(loss, wild, ignored), rel=1e-9)
    # and equals the loss of the valid part alone
    assert value(loss, logits, ignored) == pytest.approx(value(loss, logits[..., :3], target[..., :3]), rel=1e-6)


@pytest.mark.parametrize(
    "name, params",
    [("unified_focal", {}), ("unified_focal", {"variant": "asymmetric"}), ("unified_focal", {"per_image": True}),
     ("weighted_ce", {"weights": [0.3, 2.0]}), ("weighted_ce", {"weights": None})],
)
def test_two_class_softmax_equals_binary(name, params):
    z, target = sample(1, seed=9)
    two_class = torch.cat([torch.zeros_like(z), z], dim=1)  # softmax([0, z]) = [1 − σ(z), σ(z)]
    binary = build_loss(name, num_classes=1, **params)(z, target).item()
    softmax = build_loss(name, num_classes=2, **params)(two_class, target).item()
    assert binary == pytest.approx(softmax, rel=1e-9)


def test_float_binary_target_equals_long():
    logits, target = sample(1, seed=10)
    for name in ALL:
        loss = make(name, 1)
        assert value(loss, logits, target.double()) == pytest.approx(value(loss, logits, target), rel=1e-12), name


# ------------------------------------------------------------ bad arguments
def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown loss 'dicey'; available: bce_dice, ce, compound, dice, dice_ce, focal, focal_tversky"):
        build_loss("dicey", num_classes=1)
    with pytest.raises(ValueError, match="variant must be 'symmetric' or 'asymmetric'"):
        build_loss("unified_focal", num_classes=1, variant="sideways")
    with pytest.raises(ValueError, match="delta must be in"):
        build_loss("unified_focal", num_classes=1, delta=1.5)
    with pytest.raises(ValueError, match="loss 'focal_tversky': unknown parameter\\(s\\) alhpa; it takes alpha, beta, exponent, gamma, reduction, smooth"):
        build_loss("focal_tversky", num_classes=1, alhpa=0.3)
    with pytest.raises(ValueError, match="3 weights given for 2 classes"):
        build_loss("weighted_ce", num_classes=1, weights=[1, 2, 3])
    with pytest.raises(ValueError, match="target holds class 5 but the loss has 3 classes"):
        build_loss("unified_focal", num_classes=3)(torch.zeros(1, 3, 2, 2), torch.full((1, 2, 2), 5))


# ------------------------------------------------ losses take numbers, never files
LOSS_MODULES = ("segkit/losses.py", "segkit/loss_functional.py")
ALLOWED_IMPORTS = {"__future__", "collections.abc", "inspect", "typing", "torch", "torch.nn", "torch.nn.functional",
                   "segmentation_models_pytorch.losses", "segkit.loss_functional"}


def test_loss_modules_import_nothing_that_reads_files():
    import ast
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    for relative in LOSS_MODULES:
        tree = ast.parse((repo / relative).read_text())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert imported <= ALLOWED_IMPORTS, (relative, sorted(imported - ALLOWED_IMPORTS))
        called = {node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
                  for node in ast.walk(tree) if isinstance(node, ast.Call)}
        assert not called & {"open", "read_text", "read_bytes", "load", "loads", "read_class_weights"}, relative


def test_importing_the_losses_loads_no_data_module():
    import subprocess
    import sys

    script = "import sys, segkit.losses; print(sorted(m for m in sys.modules if m.startswith('segkit')))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == str(["segkit", "segkit.loss_functional", "segkit.losses"])


@pytest.mark.parametrize("num_classes", [1, 3])
def test_no_loss_opens_a_file_when_built_or_run(monkeypatch, num_classes):
    import builtins
    import io
    import json
    import pathlib

    def refuse(*args, **kwargs):
        raise AssertionError(f"a loss touched a file: {args!r}")

    logits, target = sample(num_classes, seed=11)
    logits.requires_grad_(True)
    with monkeypatch.context() as patched:  # undone before pytest reports a failure (which reads files)
        for owner, name in [(builtins, "open"), (io, "open"), (json, "load"), (pathlib.Path, "open"),
                            (pathlib.Path, "read_text"), (pathlib.Path, "read_bytes"), (pathlib.Path, "is_file"),
                            (pathlib.Path, "exists")]:
            patched.setattr(owner, name, refuse)
        for name in ALL:
            params = {"weights": [1.0 + i for i in range(max(num_classes, 2))]} if name == "weighted_ce" else {}
            build_loss(name, num_classes=num_classes, ignore_index=255, **params)(logits, target).backward()


def test_weighted_ce_refuses_unresolved_auto_weights_and_files(tmp_path):
    resolve_first = ("weights: auto is resolved by the training set-up "
                     "\\(segkit.stage.resolve_loss_config reads the dataset's class_stats.json")
    with pytest.raises(ValueError, match="weighted_ce: weights='auto' is not a list of numbers. A loss reads no file: " + resolve_first):
        build_loss("weighted_ce", num_classes=3, weights="auto")
    with pytest.raises(ValueError, match=resolve_first):
        build_loss("weighted_ce", num_classes=3)  # the config's default, unresolved
    with pytest.raises(ValueError, match="class_stats=.*is a file, and a loss reads no file.*resolve_loss_config"):
        build_loss("weighted_ce", num_classes=3, weights=[1, 2, 3], class_stats=tmp_path / "class_stats.json")
    # class_stats: null, as older checkpoints record it, still builds
    assert build_loss("weighted_ce", num_classes=3, weights=[1, 2, 3], class_stats=None).class_weights.tolist() == [1, 2, 3]


def test_training_setup_resolves_auto_weights_to_numbers(tmp_path):
    from types import SimpleNamespace

    from segkit.data.class_stats import write_class_stats
    from segkit.stage import resolve_loss_config

    auto = {"name": "weighted_ce", "weights": "auto", "class_stats": None}
    with pytest.raises(ValueError, match="weights: auto needs the dataset's class_stats.json.*segkit-prepare"):
        resolve_loss_config(auto, 3)
    path = tmp_path / "class_stats.json"
    with pytest.raises(FileNotFoundError, match=f"{path}, which does not exist yet.*segkit-prepare dataset="):
        resolve_loss_config({**auto, "class_stats": str(path)}, 3)
    with pytest.raises(FileNotFoundError, match=f"{path}, which does not exist yet.*segkit-prepare dataset="):
        resolve_loss_config(auto, 3, SimpleNamespace(class_stats_path=path))
    write_class_stats(path, [700, 200, 100], ["bg", "a", "b"], images=4)
    inverse = np.array([1 / 0.7, 1 / 0.2, 1 / 0.1])
    for resolved in (resolve_loss_config({**auto, "class_stats": str(path)}, 3),
                     resolve_loss_config(auto, 3, SimpleNamespace(class_stats_path=path))):
        assert set(resolved) == {"name", "weights"} and all(type(w) is float for w in resolved["weights"])
        np.testing.assert_allclose(resolved["weights"], inverse * 3 / inverse.sum(), rtol=1e-6)
        loss = build_loss(resolved.pop("name"), num_classes=3, **resolved)
        np.testing.assert_allclose(loss.class_weights.numpy(), inverse * 3 / inverse.sum(), rtol=1e-6)
    with pytest.raises(ValueError, match="has weights for 3 classes, the model has 2"):
        resolve_loss_config({**auto, "class_stats": str(path)}, 1)
    # numbers pass through; the set-up key class_stats never reaches the loss
    assert resolve_loss_config({"name": "weighted_ce", "weights": [1.0, 2.0], "class_stats": str(path)}, 1) == {
        "name": "weighted_ce", "weights": [1.0, 2.0]}


# ---------------------------------------- the original projects' conventions
def _np_sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def oil_seep_focal_tversky(logits, target, alpha=0.7, beta=0.3, gamma=1.33, smooth=1.0):
    """The oil-seep project's FocalTverskyLoss (segmentation_loss.py), transcribed: α on false
    positives, β on false negatives, γ used directly as the exponent."""
    p = _np_sigmoid(logits).reshape(-1)
    t = target.reshape(-1).astype(np.float64)
    tp, fp, fn = (p * t).sum(), ((1 - t) * p).sum(), (t * (1 - p)).sum()
    ti = (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)
    return (1 - ti) ** gamma


def oil_seep_dice_bce(logits, target, bce_weight, smooth=1.0):
    """The oil-seep project's DiceBCELoss (the Carvana project's Dice formula): w·BCE + (1 − w)·(1 − Dice)."""
    p = _np_sigmoid(logits).reshape(-1)
    t = target.reshape(-1).astype(np.float64)
    dice = 1 - (2 * (p * t).sum() + smooth) / (p.sum() + t.sum() + smooth)
    bce = -np.mean(t * np.log(p) + (1 - t) * np.log(1 - p))
    return bce_weight * bce + (1 - bce_weight) * dice


def test_focal_tversky_reproduces_the_oil_seep_projects_convention():
    for seed in range(3):
        logits, target = sample(1, seed=seed, shape=(2, 8, 8))
        oil_seep = build_loss("focal_tversky", num_classes=1, alpha=0.3, beta=0.7, exponent=1.33)
        expected = oil_seep_focal_tversky(logits.numpy(), target.numpy())
        assert value(oil_seep, logits, target) == pytest.approx(expected, rel=1e-9)
        # segkit's default (the paper's) is a different loss on the same batch
        assert value(build_loss("focal_tversky", num_classes=1), logits, target) != pytest.approx(expected, rel=1e-3)
    with pytest.raises(ValueError, match="exponent must be > 0"):
        build_loss("focal_tversky", num_classes=1, exponent=0.0)


@pytest.mark.parametrize("batch", ["all_background", "normal"])
@pytest.mark.parametrize("bce_weight", [0.01, 0.001])
def test_bce_dice_plain_formula_reproduces_the_oil_seep_projects_dice_bce(batch, bce_weight):
    logits, target = sample(1, seed=12, shape=(2, 8, 8))
    if batch == "all_background":
        target = torch.zeros_like(target)
    loss = build_loss("bce_dice", num_classes=1, bce_weight=bce_weight, dice_weight=1 - bce_weight,
                      dice_formula="plain", smooth=1.0)
    assert value(loss, logits, target) == pytest.approx(oil_seep_dice_bce(logits.numpy(), target.numpy(), bce_weight), rel=1e-9)


def test_bce_dice_formulas_differ_on_an_all_background_batch():
    logits, _ = sample(1, seed=13, shape=(2, 8, 8))
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    dice_only = {"bce_weight": 0.0, "dice_weight": 1.0}
    assert value(build_loss("bce_dice", num_classes=1, **dice_only), logits, target) == 0.0  # smp: absent class adds 0
    plain = value(build_loss("bce_dice", num_classes=1, dice_formula="plain", smooth=1.0, **dice_only), logits, target)
    p = _np_sigmoid(logits.numpy()).sum()
    assert plain == pytest.approx(1 - 1 / (p + 1), rel=1e-12) and plain > 0.95
    with pytest.raises(ValueError, match="dice_formula must be 'smp' or 'plain'"):
        build_loss("bce_dice", num_classes=1, dice_formula="carvana")


@pytest.mark.parametrize("num_classes", [1, 3])
def test_smp_dice_smoothing_s_equals_the_plain_formulas_2s(num_classes):
    logits, target = sample(num_classes, seed=14, shape=(2, 8, 8))
    assert set(target.unique().tolist()) == set(range(max(num_classes, 2)))  # every class present
    smp = build_loss("bce_dice", num_classes=num_classes, bce_weight=0.0, smooth=1.5)
    plain = build_loss("bce_dice", num_classes=num_classes, bce_weight=0.0, smooth=3.0, dice_formula="plain")
    assert value(smp, logits, target) == pytest.approx(value(plain, logits, target), rel=1e-12)
    assert value(smp, logits, target) != pytest.approx(value(build_loss("bce_dice", num_classes=num_classes, bce_weight=0.0,
                                                                        smooth=1.5, dice_formula="plain"), logits, target))


@pytest.mark.parametrize("name", ["bce_dice", "dice"])
def test_multiclass_dice_averages_over_all_classes_absent_ones_counting_zero(name):
    logits, _ = sample(4, seed=15, shape=(2, 8, 8))
    target = torch.randint(0, 2, (2, 8, 8), generator=torch.Generator().manual_seed(15))  # classes 2, 3 absent
    probs, g, _ = ref.probs_and_onehot(logits.numpy(), target.numpy())
    present = [1 - 2 * (probs[:, c] * g[:, c]).sum() / (probs[:, c].sum() + g[:, c].sum()) for c in (0, 1)]
    params = {"bce_weight": 0.0} if name == "bce_dice" else {}
    assert value(build_loss(name, num_classes=4, **params), logits, target) == pytest.approx(sum(present) / 4, rel=1e-6)
    if name == "bce_dice":  # the plain formula: every class its own term, absent ones near 1
        absent = [1 - 2 * 0 / (probs[:, c].sum() + 0) for c in (2, 3)]
        plain = build_loss(name, num_classes=4, bce_weight=0.0, dice_formula="plain")
        assert value(plain, logits, target) == pytest.approx((sum(present) + sum(absent)) / 4, rel=1e-6)


def weighted_ce_by_pixels(logits, target, weights, ignore=None):
    """The DOTA project's normalisation: (1/N)·Σ_i w_{y_i}·(−log p_{i,y_i}) over the N valid pixels."""
    probs, g, valid = ref.probs_and_onehot(logits, target, ignore)
    pixel_weight = np.sum(g * np.asarray(weights)[None, :, None, None], axis=1)
    return np.sum(pixel_weight * -np.sum(g * np.log(probs), axis=1)) / valid.sum()


@pytest.mark.parametrize("num_classes", [1, 4])
@pytest.mark.parametrize("ignore", [None, 255])
def test_weighted_ce_normalised_by_pixels_as_the_dota_project(num_classes, ignore):
    logits, target = sample(num_classes, seed=16)
    if ignore is not None:
        target[0, :2] = ignore
    weights = [0.5 + i for i in range(max(num_classes, 2))]
    loss = build_loss("weighted_ce", num_classes=num_classes, weights=weights, normalize_by="pixels", ignore_index=ignore)
    expected = weighted_ce_by_pixels(logits.numpy(), target.numpy(), weights, ignore)
    assert value(loss, logits, target) == pytest.approx(expected, rel=1e-9)
    default = build_loss("weighted_ce", num_classes=num_classes, weights=weights, ignore_index=ignore)
    assert value(default, logits, target) == pytest.approx(ref.weighted_ce(logits.numpy(), target.numpy(), weights, ignore))
    assert value(default, logits, target) != pytest.approx(expected, rel=1e-3)
    with pytest.raises(ValueError, match="normalize_by must be 'weights' or 'pixels'"):
        build_loss("weighted_ce", num_classes=num_classes, weights=weights, normalize_by="n")


# ------------------------------------------------------ dice_ce and compound
@pytest.mark.parametrize("num_classes", [1, 4])
@pytest.mark.parametrize("batch_dice", [True, False])
def test_dice_ce_is_nnunets_loss(num_classes, batch_dice):
    logits, target = sample(num_classes, seed=5)
    loss = make("dice_ce", num_classes, batch_dice=batch_dice)
    expected = nnunet_dice_ce(logits.numpy(), target.numpy(), batch_dice=batch_dice)
    assert value(loss, logits, target) == pytest.approx(expected, rel=1e-12)


def test_dice_ce_leaves_ignored_pixels_out():
    logits, target = sample(3, seed=6)
    target[0, :2] = 255
    loss = make("dice_ce", 3, ignore_index=255)
    assert value(loss, logits, target) == pytest.approx(nnunet_dice_ce(logits.numpy(), target.numpy(), ignore=255), rel=1e-12)


def test_compound_is_the_weighted_sum_of_its_terms():
    logits, target = sample(3, seed=7)
    terms = [{"name": "ce", "weight": 0.5}, {"name": "focal_tversky", "weight": 2.0, "gamma": 1.0}, {"name": "dice"}]
    expected = (0.5 * value(make("ce", 3), logits, target) + 2.0 * value(make("focal_tversky", 3, gamma=1.0), logits, target)
                + value(make("dice", 3), logits, target))
    assert value(make("compound", 3, terms=terms), logits, target) == pytest.approx(expected, rel=1e-12)
    default = make("compound", 3)
    assert value(default, logits, target) == pytest.approx(
        value(make("ce", 3), logits, target) + value(make("dice", 3), logits, target), rel=1e-12)


@pytest.mark.parametrize("terms, message", [
    ([], "compound: terms is empty"),
    ([{"weight": 1.0}], r"compound: term 0 \({'weight': 1.0}\) needs a name of another loss"),
    ([{"name": "compound"}], "needs a name of another loss"),
    ([{"name": "nope"}], "unknown loss 'nope'"),
    ([{"name": "ce", "gamma": 2}], r"compound: term 0 \(ce\): loss 'ce': unknown parameter\(s\) gamma; it takes none"),
    (["ce", "dice"], r"compound: term 0 \('ce'\) is not \{name: <loss>, weight: <number>\}"),
    ([{"name": "ce", "weight": "abc"}], r"compound: term 0 \(ce\): weight 'abc' is not a number"),
    ([{"name": "dice_ce", "wieght": 1}], r"unknown parameter\(s\) wieght; it takes batch_dice, ce_weight, dice_weight"),
])
def test_compound_terms_that_cannot_be_built_are_named(terms, message):
    with pytest.raises(ValueError, match=message):
        make("compound", 3, terms=terms)


def test_weights_auto_inside_a_compound_term_are_resolved_from_class_stats(tmp_path):
    import json

    from segkit.stage import resolve_loss_config

    (tmp_path / "class_stats.json").write_text(json.dumps({"weights": [0.5, 1.5, 3.0]}))
    cfg = {"name": "compound", "terms": [{"name": "weighted_ce", "weight": 1.0, "weights": "auto",
                                          "class_stats": str(tmp_path / "class_stats.json")}, {"name": "dice"}]}
    resolved = resolve_loss_config(cfg, num_classes=3)
    assert resolved["terms"][0] == {"name": "weighted_ce", "weight": 1.0, "weights": [0.5, 1.5, 3.0]}
    loss = make("compound", 3, terms=resolved["terms"])
    logits, target = sample(3, seed=8)
    assert value(loss, logits, target) == pytest.approx(
        ref.weighted_ce(logits.numpy(), target.numpy(), [0.5, 1.5, 3.0]) + value(make("dice", 3), logits, target), rel=1e-12)


# ------------------------------------------------ trainer.deterministic=true on CUDA
def test_the_deterministic_cross_entropy_equals_pytorchs(monkeypatch):
    """CUDA's nll_loss2d has no deterministic kernel, so under deterministic algorithms on a
    GPU every cross-entropy (val/ce, weighted_ce, dice_ce, bce_dice ...) takes the elementwise
    log-softmax form: the same values and gradients as F.cross_entropy, forced here on the CPU."""
    from segkit import loss_functional

    logits, target = sample(4, seed=5, shape=(2, 7, 9))
    target[0, :2] = 255
    reference = {}
    for forced in (False, True):
        monkeypatch.setattr(loss_functional, "needs_deterministic_ce", lambda _logits, f=forced: f)
        for weights in (None, torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=torch.float64)):
            for normalize_by in ("weights", "pixels"):
                x = logits.clone().requires_grad_(True)
                value = loss_functional.cross_entropy(x, target, 255, weights, normalize_by)
                value.backward()
                key = (weights is not None, normalize_by)
                if not forced:
                    reference[key] = (value.detach(), x.grad)
                else:
                    torch.testing.assert_close(value.detach(), reference[key][0], rtol=1e-12, atol=1e-12)
                    torch.testing.assert_close(x.grad, reference[key][1], rtol=1e-12, atol=1e-12)
        for name in ("dice_ce", "bce_dice", "weighted_ce"):
            loss = build_loss(name, num_classes=4, ignore_index=255, **({"weights": None} if name == "weighted_ce" else {}))
            reference.setdefault(name, loss(logits, target))
            torch.testing.assert_close(loss(logits, target), reference[name], rtol=1e-12, atol=1e-12)
    expected = F.cross_entropy(logits, torch.where(target == 255, -100, target), ignore_index=-100)
    torch.testing.assert_close(reference[(False, "weights")][0], expected)


def test_the_deterministic_form_is_used_only_on_cuda_when_asked():
    from types import SimpleNamespace

    from segkit.loss_functional import needs_deterministic_ce

    logits = torch.zeros(1, 3, 2, 2)
    assert not needs_deterministic_ce(logits)
    torch.use_deterministic_algorithms(True)
    try:
        assert not needs_deterministic_ce(logits)  # the CPU kernel is deterministic: PyTorch's fused loss stays
        assert needs_deterministic_ce(SimpleNamespace(is_cuda=True))
    finally:
        torch.use_deterministic_algorithms(False)
    assert not needs_deterministic_ce(SimpleNamespace(is_cuda=True))
