"""The learning-rate range test: the suggestion's rule on known curves, and on a real tiny model."""

from __future__ import annotations

import numpy as np
import pytest

from mnist_core.config import ConfigError, ModelConfig, TrainConfig
from mnist_core.lrfind import range_test, smooth, suggest


def test_the_suggestion_is_the_steepest_fall_before_the_minimum():
    lrs = np.logspace(-5, 1, 200)
    x = np.log10(lrs)
    # a loss that falls fastest at 1e-2 (the logistic's midpoint), bottoms out at about 0.3, then blows up
    loss = 2.3 - 2.0 / (1 + np.exp(-(x + 2) * 3)) + np.where(x > -0.5, (x + 0.5) ** 2 * 4, 0)
    lr, why = suggest(lrs, loss)
    assert lr == pytest.approx(1e-2, rel=0.08) and "falls fastest" in why
    # still falling at the end: no suggestion, and the advice says so
    lr, why = suggest(lrs[:120], loss[:120])
    assert lr is None and "still falling at the last rate" in why
    # flat: nothing to suggest
    lr, why = suggest(lrs, np.full(200, 2.3) + np.linspace(0, 0.1, 200))
    assert lr is None


def test_smoothing_has_no_lag():
    y = np.r_[np.full(50, 2.0), np.full(50, 1.0)]
    s = smooth(y)
    assert s[49] == pytest.approx(1.5, abs=0.11) and s[50] == pytest.approx(1.5, abs=0.11)  # the step stays put


@pytest.mark.process  # loads MNIST
def test_on_a_tiny_model_the_suggestion_lands_where_the_loss_falls_fastest(mnist):
    cfg = TrainConfig(batch_size=64, limit_train=4096, seed=2)
    result = range_test(ModelConfig.parse("conv8 bn relu maxpool conv16 bn relu gap conv10k1"), cfg, mnist,
                        start=1e-4, end=10.0, steps=150)
    assert result.suggestion is not None, result.why
    # an independent reading: the raw loss averaged in ten bins of log(rate); the biggest drop
    # between neighbouring bins brackets the suggestion
    logs = np.log10(result.lrs)
    edges = np.linspace(logs[0], logs[-1], 11)
    means = [np.mean(np.array(result.losses)[(logs >= a) & (logs <= b)]) for a, b in zip(edges, edges[1:])]
    k = int(np.argmax(-np.diff(means)))
    assert edges[k] - 0.3 <= np.log10(result.suggestion) <= edges[k + 2] + 0.3, (result.suggestion, means)
    assert min(result.smoothed) < result.smoothed[0] - 0.5  # it did learn on the way


def test_bad_ranges_are_refused():
    with pytest.raises(ConfigError, match="0 < start < end"):
        range_test(ModelConfig(), TrainConfig(), None, start=1.0, end=0.1)
    with pytest.raises(ConfigError, match="between 10 and 5000 steps"):
        range_test(ModelConfig(), TrainConfig(), None, steps=3)
