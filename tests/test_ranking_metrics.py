"""Ranking metrics against hand-computed values (ties count against the model)."""
import math

import numpy as np
import pytest

from trainer import metrics


def test_ranks_count_ties_against_the_model():
    scores = np.array([
        [0.9, 0.1, 0.2, 0.3],  # positive on top -> rank 0
        [0.5, 0.5, 0.1, 0.1],  # one tie -> rank 1
        [0.1, 0.2, 0.3, 0.4],  # every negative above -> rank 3
        [0.3, 0.3, 0.3, 0.3],  # all tied -> rank 3 (worst)
    ])
    assert metrics.positive_ranks(scores).tolist() == [0, 1, 3, 3]


def test_padding_never_counts():
    scores = np.array([[0.5, 0.9, 0.9, 0.1]])
    valid = np.array([[True, True, False, False]])
    assert metrics.positive_ranks(scores, valid).tolist() == [1]


def test_sampled_metrics_hand_computed():
    # ranks 0, 1, 3, 3 (see above)
    scores = np.array([[0.9, 0.1, 0.2, 0.3], [0.5, 0.5, 0.1, 0.1], [0.1, 0.2, 0.3, 0.4], [0.3, 0.3, 0.3, 0.3]])
    result = metrics.sampled_ranking_metrics(scores, ks=(1, 2, 10))
    assert result["hr@1"] == pytest.approx(0.25)
    assert result["hit@1"] == pytest.approx(0.25)
    assert result["hr@2"] == pytest.approx(0.5)
    assert result["hr@10"] == pytest.approx(1.0)
    assert result["ndcg@1"] == pytest.approx(0.25)
    # rank 0 -> 1, rank 1 -> 1/log2(3), ranks 3 are outside @2
    assert result["ndcg@2"] == pytest.approx((1 + 1 / math.log2(3)) / 4)
    assert result["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3) + 2 * 1 / math.log2(5)) / 4)
    assert result["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 4 + 1 / 4) / 4)
    assert result["num_users"] == 4 and result["num_candidates"] == 4


def test_full_ranking_masks_train_items():
    scores = np.array([
        [0.9, 0.8, 0.1, 0.5],  # positive item 1; item 0 is a train item (masked) -> rank 0
        [0.2, 0.3, 0.3, 0.9],  # positive item 2; item 1 ties, item 3 above -> rank 2
    ])
    exclude = np.array([[True, False, False, False], [False, False, False, False]])
    result = metrics.full_ranking_metrics(scores, np.array([1, 2]), exclude, ks=(1, 3))
    assert result["full_recall@1"] == pytest.approx(0.5)
    assert result["full_recall@3"] == pytest.approx(1.0)
    assert result["full_ndcg@3"] == pytest.approx((1 + 1 / 2) / 2)  # 1/log2(2+2) = 1/2
    assert result["full_mrr"] == pytest.approx((1 + 1 / 3) / 2)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="users, 1 \\+ negatives"):
        metrics.positive_ranks(np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="mask shape"):
        metrics.positive_ranks(np.ones((2, 3)), np.ones((2, 2), bool))
