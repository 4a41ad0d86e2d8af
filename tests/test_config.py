import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

from segkit.models import count_parameters
from segkit.stage import build_module
from tests.helpers import compose_config

REPO = Path(__file__).resolve().parents[1]
DATASETS = sorted(p.stem for p in (REPO / "conf" / "dataset").glob("*.yaml") if not p.stem.startswith("_"))
MODELS = sorted(p.stem for p in (REPO / "conf" / "model").glob("*.yaml"))
compose_train = partial(compose_config, "train")


def test_groups_are_there():
    assert {"airbus", "synthetic"} <= set(DATASETS)
    assert {"unet", "mobilenet_unet", "segnet"} <= set(MODELS)
    for group in ("loss", "optimizer", "scheduler", "trainer", "callbacks", "logger"):
        assert list((REPO / "conf" / group).glob("*.yaml")), group


def test_defaults_are_the_demo():
    cfg = compose_train([])
    assert cfg.data._target_ == "datamodules.synthetic.SyntheticDataModule"
    assert cfg.model.name == "mobilenet_unet" and cfg.model.encoder_weights is None
    assert cfg.trainer.precision == "auto"


@pytest.mark.parametrize("dataset", DATASETS)
def test_every_dataset_composes_and_its_datamodule_accepts_the_config(dataset):
    cfg = compose_train([f"dataset={dataset}", "data.root=/nonexistent"])
    datamodule = instantiate(cfg.data, _convert_="all")
    assert isinstance(datamodule, get_class(cfg.data._target_))
    assert datamodule.num_classes == cfg.data.num_classes


@pytest.mark.parametrize("model", MODELS)
def test_every_model_composes_and_builds(model):
    cfg = compose_train([f"model={model}", "data.num_classes=2"])
    module = build_module(cfg)
    assert count_parameters(module.net) > 0
    assert module.hparams.num_classes == 2


def test_python_and_yaml_defaults_agree():
    """Each YAML default of the Airbus datamodule equals the Python default."""
    import inspect

    from datamodules.airbus import AirbusDataModule

    cfg = compose_train(["dataset=airbus"])
    signature = inspect.signature(AirbusDataModule.__init__)
    for name, parameter in signature.parameters.items():
        if name in ("self", "augment", "normalize", "seed") or name not in cfg.data:
            continue
        assert cfg.data[name] == parameter.default, name


def test_configs_are_found_after_a_plain_wheel_install(tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(REPO)],
        check=True, capture_output=True,
    )
    assert (target / "segkit" / "conf" / "dataset" / "airbus.yaml").is_file()
    probe = (
        "import segkit, datamodules\n"
        "from hydra import compose, initialize_config_module\n"
        "with initialize_config_module(config_module='segkit.conf', version_base='1.3'):\n"
        "    cfg = compose(config_name='train', overrides=['dataset=airbus', 'model=segnet'])\n"
        "print(segkit.__file__)\nprint(cfg.data._target_, cfg.model.name)\n"
    )
    env = {"PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.splitlines()[-2:]
    assert first.startswith(str(target))  # the installed copy, not the checkout
    assert second == "datamodules.airbus.AirbusDataModule segnet"


def _python_defaults(factory):
    import inspect

    target = factory.__init__ if inspect.isclass(factory) else factory
    return {n: p.default for n, p in inspect.signature(target).parameters.items() if p.default is not p.empty}


@pytest.mark.parametrize("dataset", DATASETS)
def test_dataset_yaml_equals_the_python_defaults(dataset):
    """``segkit-train dataset=X`` and ``XDataModule(root=...)`` in Python get the same settings:
    the YAML (from ``_base.yaml``) against the base defaults, the class's ``defaults`` and its
    own arguments' defaults."""
    from segkit.data.datamodule import BASE_DEFAULTS, SegmentationDataModule

    data = compose_train([f"dataset={dataset}"]).data
    cls = get_class(data._target_)
    python = dict(BASE_DEFAULTS)
    for klass in reversed(cls.__mro__):  # own arguments of every class from the base down
        if issubclass(klass, SegmentationDataModule) and "__init__" in vars(klass) and klass is not SegmentationDataModule:
            python.update(_python_defaults(klass))
    python.update(cls.defaults)
    yaml_settings = {k: v for k, v in OmegaConf.to_container(data, resolve=True).items() if k != "_target_"}
    assert yaml_settings.keys() == python.keys(), f"{dataset}: YAML and Python name different settings"
    for key, value in yaml_settings.items():
        expected = list(python[key]) if isinstance(python[key], tuple) else python[key]
        assert value == expected, f"conf/dataset/{dataset}.yaml: {key} is {value!r} in YAML, {expected!r} in Python"


@pytest.mark.parametrize("group", ["loss", "model"])
def test_group_yaml_defaults_equal_the_python_defaults(group):

    import segmentation_models_pytorch.losses as smp_losses
    import yaml

    from segkit.losses import LOSSES
    from segkit.models import MODELS

    smp_classes = {"dice": smp_losses.DiceLoss, "jaccard": smp_losses.JaccardLoss,
                   "lovasz": smp_losses.LovaszLoss, "focal": smp_losses.FocalLoss}
    for path in sorted((REPO / "conf" / group).glob("*.yaml")):
        params = yaml.safe_load(path.read_text())
        shortcut = params.pop("defaults", None) is not None  # model/fpn.yaml etc.: smp.yaml with arch and encoder set
        name = params.pop("name", None) or "smp"
        if group == "loss":
            factory = smp_classes.get(name, LOSSES[name])
        else:
            from segkit.models.segnet import SegNet

            factory = SegNet if name == "segnet" else MODELS[name]
        defaults = _python_defaults(factory)
        if group == "model":
            from segkit.models import INPUT_OPTIONS

            defaults.update(INPUT_OPTIONS)  # options on the inputs, which every model config may carry
        for key, yaml_value in params.items():
            assert key in defaults, f"{path.name}: {key} is no parameter of {name}"
            if shortcut:
                continue  # its values choose an architecture: they are meant to differ from the defaults
            python_value = defaults[key]
            if isinstance(python_value, tuple):
                python_value = list(python_value)
            assert yaml_value == pytest.approx(python_value) if isinstance(yaml_value, float) else yaml_value == python_value, (
                f"{path.name}: {key} is {yaml_value!r} in YAML, {python_value!r} in Python"
            )
