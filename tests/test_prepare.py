import json

import numpy as np
import pytest

from segkit.data.class_stats import inverse_frequency_weights
from segkit.prepare import run_prepare
from segkit.stage import resolve_loss_config
from tests.fixtures.airbus import write_airbus
from tests.helpers import compose_config


def test_prepare_counts_the_training_split(tmp_path, capsys):
    fixture = write_airbus(tmp_path / "airbus")
    cfg = compose_config(
        "prepare", ["dataset=airbus", f"data.root={fixture.root}", f"data.cache_dir={tmp_path / 'work'}", "data.num_workers=0"])
    stats = run_prepare(cfg)
    path = tmp_path / "work" / "class_stats.json"
    assert stats["path"] == str(path) and json.loads(path.read_text())["pixel_counts"] == stats["pixel_counts"]

    from datamodules.airbus import AirbusDataModule

    dm = AirbusDataModule(root=str(fixture.root), cache_dir=str(tmp_path / "work"), num_workers=0)
    dm.setup("fit")
    masks = np.stack([fixture.mask(n) for n in dm.train_dataset.names])
    expected = [int((masks == 0).sum()), int((masks == 1).sum())]
    assert stats["pixel_counts"] == expected
    assert stats["class_names"] == ["background", "ship"] and stats["images"] == len(dm.train_dataset)
    freq = np.array(expected) / sum(expected)
    assert stats["weights"] == pytest.approx(list((1 / freq) * 2 / (1 / freq).sum()))
    assert "ship" in capsys.readouterr().out

    # weights: auto resolves through the datamodule to these numbers
    loss = resolve_loss_config({"name": "weighted_ce", "weights": "auto", "class_stats": None}, 1, dm)
    assert loss["weights"] == pytest.approx(stats["weights"]) and "class_stats" not in loss


def test_inverse_frequency_weights():
    assert inverse_frequency_weights([300, 100, 0]) == pytest.approx([0.5, 1.5, 0.0])
    with pytest.raises(ValueError, match="no pixels counted"):
        inverse_frequency_weights([0, 0])
