"""Correct and Smooth: the normalised adjacency, one propagation step and a correction, by hand; a planted graph."""
import numpy as np

from trainer import correct_and_smooth as cs


def test_normalized_adjacency_by_hand():
    # path 0 - 1 - 2, the first edge given twice (both orders), node 3 isolated
    adjacency = cs.normalized_adjacency(np.array([[0, 1], [1, 0], [1, 2]]), 4).toarray()
    half = 1 / np.sqrt(2)  # 1 / sqrt(deg 1 * deg 2)
    np.testing.assert_allclose(adjacency, [[0, half, 0, 0], [half, 0, half, 0], [0, half, 0, 0], [0, 0, 0, 0]])


def test_one_propagation_step_by_hand():
    adjacency = cs.normalized_adjacency(np.array([[0, 1], [1, 2]]), 3)
    start = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    half = 1 / np.sqrt(2)
    # X1 = 0.5 S X0 + 0.5 X0: node 1 gets half of each end's one-hot times 1/sqrt(2)
    expected = 0.5 * np.array([[0, 0], [half, half], [0, 0]]) + 0.5 * start
    np.testing.assert_allclose(cs.propagate(adjacency, start, 0.5, 1), expected)
    clipped = cs.propagate(adjacency, 4 * start, 0.5, 1, clip=True)
    np.testing.assert_allclose(clipped, [[1, 0], [1, 1], [0, 1]])  # 2, 1.41, 1.41, 2 -> 1


def test_correction_with_autoscale_by_hand():
    # 0 - 1; node 0 is train with class 1, but the base model says 0.8 / 0.2 for it and 0.6 / 0.4 for node 1.
    adjacency = cs.normalized_adjacency(np.array([[0, 1]]), 2)
    base = np.array([[0.8, 0.2], [0.6, 0.4]])
    labels, known = np.array([1, 0]), np.array([True, False])
    settings = cs.Settings(correct_alpha=0.5, smooth_alpha=0.0, iterations=1)
    # E0 = [[-0.8, 0.8], [0, 0]]; E1 = 0.5 S E0 + 0.5 E0 = [[-0.4, 0.4], [-0.4, 0.4]];
    # sigma = |E0[train]| = 1.6 per train node, |E1| = 0.8 per node -> scale 2;
    # node 1: [0.6, 0.4] + 2 [-0.4, 0.4] = [-0.2, 1.2]; node 0 is set to its one-hot label.
    final = cs.correct_and_smooth(base, labels, known, adjacency, settings)
    np.testing.assert_allclose(final, [[0.0, 1.0], [-0.2, 1.2]])
    # Neither step: the base predictions, with the known rows set to their labels.
    none = cs.correct_and_smooth(base, labels, known, adjacency, cs.Settings(0.0, 0.0, 1))
    np.testing.assert_allclose(none, [[0.0, 1.0], [0.6, 0.4]])


def test_smoothing_fixes_a_blind_base_model_on_a_planted_graph():
    """Uniform base predictions (no information): the smoothing alone makes it label propagation."""
    from rawdata import synth

    graph = synth.generate_lastfm(400, seed=0, num_classes=4, avg_likes=1, follow_homophily=0.8)
    labels = np.asarray(graph.labels)
    # not seed 0: the generator drew the labels from the same stream, so the mask would follow them
    known = np.random.default_rng(7).random(labels.size) < 0.5
    adjacency = cs.normalized_adjacency(graph.edges, labels.size)
    base = np.full((labels.size, 4), 0.25)
    final = cs.correct_and_smooth(base, labels, known, adjacency, cs.Settings(0.8, 0.8, 30))
    accuracy = (final.argmax(axis=1) == labels)[~known].mean()
    majority = np.bincount(labels[known]).max() / known.sum()
    assert accuracy > majority + 0.2, (accuracy, majority)
