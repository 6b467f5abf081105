"""The learning guard, paper models: a few dozen steps on phantoms with each model's recipe at a
small width, then eval-mode Dice on held-out phantoms must be above a floor and close to
training-mode Dice (``busseg.engine.learning_check``; paper widths: benchmarks/learning_check.py).

Widths, steps and (where a small width learns too slowly at the recipe's rate) the learning
rate are chosen so that each check takes seconds; every other setting is the model's recipe.
"""

from __future__ import annotations

import pytest

from busseg.engine.learning_check import LearningCheckResult, learning_check
from busseg.errors import ConfigError
from conftest import assert_learns

#: learning_check keyword arguments per model (64² phantoms, 48 training, 16 held out).
SMALL = {
    "attention_unet_plus": dict(model_options={"base_channels": 16}, overrides=["optimizer.lr=3e-4"], steps=100),
    "hybrid_attention_net": dict(batch_size=8, steps=30),
    "acsnet": dict(batch_size=4, steps=30),
    "elad_net": dict(model_options={"decoder_channels": [32, 16, 16, 8]}, steps=60),
    "dc_net": dict(
        model_options={"widths": [16, 32, 64, 128, 256],
                       "decomposition_widths": [[16, 32], [32, 64], [64, 128], [128, 32], [32, 16]]},
        steps=40,
    ),
}


@pytest.mark.parametrize(
    "model",
    [
        "attention_unet_plus",
        "hybrid_attention_net",
        "acsnet",
        "elad_net",
        "dc_net",
    ],
)
def test_paper_model_learns_in_eval_mode(model):
    assert_learns(model, SMALL[model])


def test_guard_catches_the_every_level_dropout_of_attention_unet_plus():
    """Guo's dropout read as one between the two convolutions of every encoder level (the
    default until issue 13): eval-mode predictions collapse while training mode segments."""
    config = SMALL["attention_unet_plus"]
    result = learning_check(
        "attention_unet_plus",
        **{**config, "model_options": {**config["model_options"], "dropout_levels": "encoder"}},
    )
    assert result.dice_eval < 0.1 and result.gap > 0.25 and not result.passed(0.5, 0.15), result


def test_result_pass_rule_and_bad_arguments():
    result = learning_check("unet", model_options={"base_channels": 4}, steps=2, n_train=8, n_test=4,
                            batch_size=4, cooldown_steps=1)
    assert result.steps == 2 and result.batch_size == 4 and result.image_size == 64
    assert result.model_options["base_channels"] == 4 and result.params > 0
    assert 0.0 <= result.dice_eval <= 1.0 and 0.0 <= result.dice_train_mode <= 1.0
    assert result.as_dict()["gap"] == pytest.approx(result.dice_train_mode - result.dice_eval)
    fake = LearningCheckResult("m", {}, 1, 1, 64, 1, 1.0, 0.5, dice_eval=0.6, dice_train_mode=0.8, seconds=0.0)
    assert fake.passed(0.5, 0.25) and not fake.passed(0.5, 0.15) and not fake.passed(0.7, 0.25)
    with pytest.raises(ConfigError, match="does not segment"):
        learning_check("acsnet_clsnet")
    with pytest.raises(ConfigError, match="size divisor"):
        learning_check("attention_unet_plus", image_size=48)
    with pytest.raises(ConfigError, match="cooldown_steps"):
        learning_check("unet", steps=5, cooldown_steps=6)
