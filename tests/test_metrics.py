"""Metrics against hand-computed values."""
import math

import pytest

from trainer import metrics


def test_rmse_and_mae_hand_computed():
    predictions = [3.0, 4.0, 2.5, 5.0]
    targets = [4.0, 4.0, 1.5, 3.0]
    # errors: -1, 0, 1, 2 -> squares 1, 0, 1, 4 -> mean 1.5
    assert metrics.rmse(predictions, targets) == pytest.approx(math.sqrt(1.5))
    assert metrics.mae(predictions, targets) == pytest.approx(1.0)


def test_metrics_reject_bad_shapes():
    with pytest.raises(ValueError, match="2 predictions for 3 targets"):
        metrics.rmse([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="no examples"):
        metrics.mae([], [])
