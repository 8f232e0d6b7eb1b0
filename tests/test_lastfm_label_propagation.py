"""The label propagation baseline: the propagation itself, and a run on generated and real graphs."""
import numpy as np
import pytest

from baselines import lastfm_label_propagation as lp
from rawdata import synth

from tests.conftest import shared_file


def test_propagation_spreads_along_edges_and_keeps_clamped_rows():
    # path 0 - 1 - 2 - 3: node 0 is class 0, node 3 class 1; 1 and 2 take the nearer one.
    edges = np.array([[0, 1], [1, 2], [2, 3]])
    seeds = np.zeros((4, 2))
    seeds[0, 0] = seeds[3, 1] = 1.0
    clamp = np.array([True, False, False, True])
    scores = lp.propagate(edges, 4, seeds, clamp, alpha=0.9, iterations=50)
    assert scores.argmax(axis=1).tolist() == [0, 0, 1, 1]
    np.testing.assert_array_equal(scores[clamp], seeds[clamp])


def test_beats_the_majority_class_on_a_planted_graph(tmp_path, capsys):
    paths = synth.write_lastfm(synth.generate_lastfm(600, seed=2, num_classes=4, avg_likes=3), str(tmp_path))
    users, labels, edges, skipped = lp.read_graph(paths["edges.csv"], paths["target.csv"], 4)
    assert skipped == 0 and len(users) == 600
    result = lp.evaluate(users, labels, edges, seed=0, fractions=(0.8, 0.1, 0.1), num_classes=4, alpha=0.9, iterations=30)
    majority = np.bincount(labels).max() / len(labels)
    assert result["test"]["accuracy"] > majority + 0.2
    assert result["valid"]["users"] + result["test"]["users"] == pytest.approx(120, abs=4)


def test_neighbourhood_coverage_by_hand():
    # 0(train, a) - 1(test, a) - 2(train, b) - 3(test, b) - 4(train, b); 5 (test, a) alone; 6 (valid, a) - 4.
    labels = np.array([0, 0, 1, 1, 1, 0, 0])
    edges = np.array([[0, 1], [1, 2], [2, 3], [3, 4], [4, 6]])
    split = np.array(["train", "test", "train", "test", "train", "test", "valid"])
    coverage = lp.neighbourhood_coverage(labels, edges, split, num_classes=2)
    test = coverage["test"]
    assert test["users"] == 3 and test["no_train_friend"] == pytest.approx(1 / 3)  # user 5
    assert test["own_class_1_hop"] == pytest.approx(2 / 3)  # 1 (friend 0 is a), 3 (friends 2, 4 are b)
    assert test["own_class_2_hops"] == pytest.approx(2 / 3)
    edges = np.vstack([edges, [[6, 5]]])  # now 5 (a) has 6 (valid) as friend and 4 (train, b) two hops away
    assert lp.neighbourhood_coverage(labels, edges, split, 2)["test"]["no_train_friend"] == pytest.approx(1 / 3)
    two_hops = lp.neighbourhood_coverage(labels, np.vstack([edges, [[6, 0]]]), split, 2)["test"]  # 5 - 6 - 0 (a)
    assert two_hops["own_class_1_hop"] == pytest.approx(2 / 3) and two_hops["own_class_2_hops"] == 1.0
    # User 6 (a): its only friend 4 is b, and 2 (b) is two hops away: no a within 2 hops.
    assert coverage["valid"] == {"users": 1, "no_train_friend": 0.0, "own_class_1_hop": 0.0, "own_class_2_hops": 0.0}
    split[6] = "train"  # 6 (a) a train friend of 5: 5 now has its class one hop away
    assert lp.neighbourhood_coverage(labels, edges, split, 2)["test"]["own_class_1_hop"] == 1.0


@pytest.mark.real_data
def test_real_lastfm_asia_seed_0(capsys):
    edges, targets = shared_file("lastfm_asia", "lastfm_asia_edges.csv"), shared_file("lastfm_asia", "lastfm_asia_target.csv")
    assert lp.main(["--edges", str(edges), "--targets", str(targets), "--seeds", "0", "--neighbourhoods"]) == 0
    out = capsys.readouterr().out
    assert "7624 labelled users, 27806 friendships, 0 rows skipped" in out
    assert "seed 0: valid acc 0.8667 macro-F1 0.7959 | test acc 0.8686 macro-F1 0.7779" in out
    assert ("test (761 users): no train friend 0.042; own class among train friends 0.871, "
            "among train users within 2 hops 0.947") in out
