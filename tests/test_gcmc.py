"""GCMC end to end on a tiny planted dataset: the rating graph built in Beam, full-graph and sampled fits, export.

One module-scoped pipeline output (movielens then rating_graph, with side-feature
files that hold every kind of bad row) is shared by every test here.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from beam_pipelines import common, movielens, rating_graph
from schemas import rating_graph as G
from tests.conftest import run_experiment, two_taste_ratings

NUM_USERS, NUM_ITEMS = 60, 40


def _tsv(rows) -> str:
    return "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Planted ratings (odd users like odd items), given test and valid files, and u.user / u.item lookalikes."""
    root = tmp_path_factory.mktemp("gcmc")
    rows = two_taste_ratings(num_users=NUM_USERS, num_items=NUM_ITEMS, per_user=16, seed=5, spread=1.5, noise=0.6)
    train = [r for k, r in enumerate(rows) if k % 5 not in (0, 1)]
    valid = [r for k, r in enumerate(rows) if k % 5 == 1]
    test = [r for k, r in enumerate(rows) if k % 5 == 0]
    train_users = {u for u, _, _, _ in train}
    train_items = {i for _, i, _, _ in train}
    valid.append((NUM_USERS + 5, 1, 4, 2_000_000))  # a valid row of a user with no train rating: no node
    for name, part in (("base.tsv", train), ("valid.tsv", valid), ("test.tsv", test)):
        (root / name).write_text(_tsv(part))
    occupations = ("writer", "artist", "other")
    users = [f"{u}|{20 + u % 30}|{'MF'[u % 2]}|{occupations[u % 3]}|0000{u}" for u in range(1, NUM_USERS + 1) if u != 7]
    users += ["8|30|M|writer|11111",           # duplicate id: the first line (above) is kept
              "x|30|M|writer|1",               # malformed id
              "9|abc|F|artist|1",              # malformed age
              "999|30|F|artist|1",             # not a node: no train rating
              ""]                              # blank
    (root / "u.user").write_text("\n".join(users) + "\n")
    flags = lambda i: "|".join("1" if k == 1 + i % 2 else "0" for k in range(19))  # noqa: E731
    items = [f"{i}|Movie {i} (1995)|01-Jan-1995||http://x|{flags(i)}" for i in range(1, NUM_ITEMS + 1)]
    items += ["12|Short|line"]                 # malformed: too few fields
    (root / "u.item").write_text("\n".join(items) + "\n")
    data = root / "data"
    movielens.run(["--input", str(root / "base.tsv"), "--valid-input", str(root / "valid.tsv"),
                   "--test-input", str(root / "test.tsv"), "--split", "given", "--output", str(data),
                   "--num-shards", "2"])
    summary = rating_graph.run(["--data", str(data), "--user-features", str(root / "u.user"),
                                "--item-features", str(root / "u.item"), "--max-rejected-fraction", "0.2"])
    return {"root": root, "data": data, "train": train, "valid": valid, "test": test, "summary": summary,
            "train_users": train_users, "train_items": train_items}


def _read_graph(data, name: str):
    """A written graph as {edge set: {(raw source, raw target)}} and the node ids, through TF-GNN's parser."""
    import tensorflow as tf
    import tensorflow_gnn as tfgnn
    from google.protobuf import text_format

    schema = text_format.Parse((data / G.SCHEMA_FILE).read_text(), tfgnn.GraphSchema())
    records = list(tf.data.TFRecordDataset(str(data / G.GRAPH_FILES[name]), compression_type="GZIP"))
    assert len(records) == 1
    graph = tfgnn.parse_single_example(tfgnn.create_graph_spec_from_schema_pb(schema), records[0])
    ids = {n: [v.decode() for v in graph.node_sets[n][G.ID].numpy()] for n in G.NODE_SETS}
    edges = {}
    for edge_set_name, edge_set in graph.edge_sets.items():
        adjacency = edge_set.adjacency
        source_ids, target_ids = ids[adjacency.source_name], ids[adjacency.target_name]
        edges[edge_set_name] = {(source_ids[s], target_ids[t])
                                for s, t in zip(adjacency.source.numpy(), adjacency.target.numpy())}
    return graph, ids, edges


def _expected_edges(rows) -> dict[str, set]:
    expected: dict[str, set] = {}
    for u, i, r, _ in rows:
        if u <= NUM_USERS:
            expected.setdefault(G.rating_edge_set(float(r)), set()).add((str(u), str(i)))
            expected.setdefault(G.reverse_edge_set(float(r)), set()).add((str(i), str(u)))
    return expected


# --------------------------------------------------------------------------- the graph, built in Beam
@pytest.mark.slow
def test_graph_edges_per_level_are_the_split_ratings(tiny):
    levels = sorted({float(r) for _, _, r, _ in tiny["train"]})
    graph_summary = tiny["summary"]["graph"]
    assert graph_summary["levels"] == levels
    _, ids, train_edges = _read_graph(tiny["data"], "train")
    assert train_edges == _expected_edges(tiny["train"])
    # Hand-checked: the first train row is an edge of its level both ways, and nowhere else.
    u, i, r, _ = tiny["train"][0]
    assert (str(u), str(i)) in train_edges[G.rating_edge_set(float(r))]
    assert (str(i), str(u)) in train_edges[G.reverse_edge_set(float(r))]
    assert sum((str(u), str(i)) in e for name, e in train_edges.items() if name.startswith("rating_")) == 1
    assert set(ids["user"]) == {str(u) for u in tiny["train_users"]}
    _, _, both = _read_graph(tiny["data"], "train_valid")
    assert both == _expected_edges(tiny["train"] + [row for row in tiny["valid"] if float(row[2]) in levels])
    assert graph_summary["built_from"]["valid_unknown_node"] == 1  # the valid row of a user without a node
    assert graph_summary["edges"] == {"train": len(tiny["train"]), "train_valid": len(tiny["train"]) + len(tiny["valid"]) - 1}
    assert graph_summary["accounting"]["balanced"]


@pytest.mark.slow
def test_side_features_account_for_every_line(tiny):
    side = tiny["summary"]["graph"]["side_features"]
    users = side["user"]
    assert users["counts"] == {"lines_read": NUM_USERS - 1 + 5, "header_lines": 0, "blank_lines": 1, "rejected": 2,
                               "duplicates": 1, "not_in_graph": 1, "used": NUM_USERS - 1}
    assert users["nodes_without_features"] == 1  # user 7 has no line
    assert users["columns"][:3] == ["age/50", "gender=F", "gender=M"] and users["dim"] == 3 + 3
    assert users["accounting"]["balanced"] and side["item"]["accounting"]["balanced"]
    assert side["item"]["counts"]["rejected"] == 1 and side["item"]["dim"] == 19
    rejected = [json.loads(line) for line in (tiny["data"] / "rejected" / "graph-00000-of-00001.jsonl").read_text().splitlines()]
    reasons = sorted(r["reason"].split(":")[0].split(" (")[0] for r in rejected)
    assert reasons == ["duplicate user id 8", "item features", "not a node", "user features", "user features"]
    graph, ids, _ = _read_graph(tiny["data"], "train")
    vectors = graph.node_sets["user"][G.SIDE].numpy()
    row = ids["user"].index("8")
    assert vectors[row].tolist() == pytest.approx([(20 + 8 % 30) / 50, 0.0, 1.0, 0.0, 1.0, 0.0])  # 8|28|M|other
    assert not vectors[ids["user"].index("7")].any()


@pytest.mark.slow
def test_feature_rows_over_the_reject_limit_fail_with_one_line(tiny, tmp_path):
    bad = tmp_path / "u.user"
    bad.write_text("1|x|M|a|1\n2|y|F|b|1\n3|30|M|c|1\n")
    with pytest.raises(common.PipelineInputError, match="malformed or duplicates"):
        rating_graph.run(["--data", str(tiny["data"]), "--user-features", str(bad)])
    summary = json.loads((tiny["data"] / "dataset.json").read_text())
    assert "graph" not in summary  # the half-built graph is not advertised
    rating_graph.run(["--data", str(tiny["data"]), "--user-features", str(tiny["root"] / "u.user"),
                      "--item-features", str(tiny["root"] / "u.item"), "--max-rejected-fraction", "0.2"])


def test_parsers_and_format_detection():
    assert rating_graph.parse_user_line("3|23|m|writer|32067", "uuser") == ("3", 23.0, "M", "writer")
    assert rating_graph.parse_user_line("3::F::25::7::55117", "dat") == ("3", 25.0, "F", "7")
    assert rating_graph.parse_item_line("5::Up (2009)::Comedy|Animation", "dat") == ("5", ("Animation", "Comedy"))
    assert rating_graph.parse_item_line('6,"Heat, The (1995)",Action|Crime', "csv") == ("6", ("Action", "Crime"))
    for text, fmt in (("1|2|X|w|z", "uuser"), ("1|2|M", "uuser"), ("7::T::", "dat")):
        with pytest.raises(rating_graph.RowError):
            (rating_graph.parse_user_line if fmt == "uuser" else rating_graph.parse_item_line)(text, fmt)
    assert rating_graph.detect_feature_format("ml-1m/movies.dat", "item", "1::Toy Story::A") == "dat"
    assert rating_graph.detect_feature_format("movies.csv", "item", "movieId,title,genres") == "csv"
    assert rating_graph.detect_feature_format("u.item", "item", "1|Toy|x") == "uitem"
    with pytest.raises(common.PipelineInputError, match="--item-format"):
        rating_graph.detect_feature_format("items.txt", "item", "1 2 3")


@pytest.mark.slow
def test_rerun_of_the_ratings_pipeline_makes_the_graph_stale(tiny, tmp_path):
    """A graph built from other splits is refused with what to run, not silently used."""
    from trainer import data as data_lib, rating_graph as graph_data

    info = data_lib.load_data_info(str(tiny["data"]))
    changed = dict(info.summary, graph=dict(info.summary["graph"], built_from={"train_examples": 1, "valid_examples": 1}))
    with pytest.raises(data_lib.DataError, match="rating_graph --data"):
        graph_data.graph_summary(data_lib.DataInfo(**{**info.__dict__, "summary": changed}))


def test_a_missing_vocabulary_is_one_line_naming_it(tiny, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny["data"], data)
    (data / "transform_fn" / "assets" / "item_id").unlink()
    with pytest.raises(common.PipelineInputError, match=r"the item_id vocabulary \(.*item_id\) is missing"):
        rating_graph.run(["--data", str(data)])


# --------------------------------------------------------------------------- training, evaluation, export
FIT = ("train.epochs=8", "train.steps_per_epoch=5", "train.learning_rate=0.02", "hparams.hidden_dim=40",
       "hparams.out_dim=16", "hparams.dropout=0.3")


@pytest.fixture(scope="module")
def full(tiny):
    # With the moving average of the weights: the kept epoch, the test metrics and the export all use it.
    return run_experiment("movielens_gcmc.yaml", tiny["data"], tiny["root"] / "full", *FIT, "hparams.ema_decay=0.9")


@pytest.mark.slow
def test_full_graph_fit_learns_the_planted_tastes(full, tiny):
    train_mean = np.mean([r for _, _, r, _ in tiny["train"]])
    baseline = float(np.sqrt(np.mean([(r - train_mean) ** 2 for _, _, r, _ in tiny["test"]])))
    assert full.test["rmse"] < 0.75 * baseline, (full.test, baseline)
    assert full.valid["message_passing_graph"] == "train" and full.test["message_passing_graph"] == "train_valid"
    assert full.selection["epochs_run"] == 8 and len(full.history["val_rmse"]) == 8
    assert full.valid["rmse"] == pytest.approx(min(full.history["val_rmse"]), abs=1e-5)


@pytest.mark.slow
def test_export_answers_raw_ids_like_the_evaluation_and_unknown_ids(full, tiny):
    import tensorflow as tf

    serve = tf.saved_model.load(full.outputs["export"]).signatures["serving_default"]
    u, i, _, _ = tiny["test"][0]
    known = serve(user_id=tf.constant([str(u), str(u), "123456", "123456"]),
                  item_id=tf.constant([str(i), "999999", str(i), "999999"]))
    ratings = known["rating"].numpy()
    assert known["known_user"].numpy().tolist() == [True, True, False, False]
    assert known["known_item"].numpy().tolist() == [True, False, True, False]
    assert np.all(np.isfinite(ratings)) and np.all((ratings >= 1) & (ratings <= 5))
    # Every test row served through the raw-id signature scores exactly the evaluated test RMSE.
    served = serve(user_id=tf.constant([str(r[0]) for r in tiny["test"]]),
                   item_id=tf.constant([str(r[1]) for r in tiny["test"]]))["rating"].numpy()
    actual = np.array([r[2] for r in tiny["test"]], np.float32)
    assert float(np.sqrt(np.mean((served - actual) ** 2))) == pytest.approx(full.test["rmse"], abs=1e-4)


@pytest.mark.slow
def test_sampled_subgraph_with_every_edge_encodes_like_the_full_graph(tiny):
    """The sampler's exact mode (fanout None) gives the seeds the states the whole graph gives them."""
    import tensorflow as tf

    from trainer import data as data_lib, hparams, rating_graph as graph_data
    from trainer.models import gcmc

    graphs = graph_data.load(data_lib.load_data_info(str(tiny["data"])))
    model = gcmc.build_model(hparams.GCMC(hidden_dim=40, out_dim=8, side_features=True, normalization="symmetric"),
                             graphs.model_info)
    full_users, full_items = model.encode(graphs.graph("train"))
    users, items = tf.constant([3, 0, 3, 7], tf.int64), tf.constant([5, 5, 1, 2], tf.int64)
    subgraph, user_position, item_position = graphs.sampler("train", None)(users, items)
    sub_users, sub_items = model.encode(subgraph)
    np.testing.assert_allclose(tf.gather(sub_users, user_position), tf.gather(full_users, users), atol=1e-5)
    np.testing.assert_allclose(tf.gather(sub_items, item_position), tf.gather(full_items, items), atol=1e-5)
    # With a fanout, at most that many edges per seed and level, weighted up to the full degree.
    sampled, _, _ = graphs.sampler("train", 1)(users, items)
    for edge_set in sampled.edge_sets.values():
        receivers = edge_set.adjacency.target.numpy()
        assert np.bincount(receivers).max(initial=0) <= 1
        assert np.all(edge_set[G.WEIGHT].numpy() >= 1.0)


@pytest.mark.slow
def test_moving_average_of_the_weights_is_evaluated_and_restored(tiny):
    """ema_decay: after every step a = d a + (1 - d) w, d = min(ema_decay, (1 + step) / (10 + step)); swapped in and back."""
    import tensorflow as tf

    from trainer import data as data_lib, hparams, rating_graph as graph_data
    from trainer.models import gcmc

    with pytest.raises(ValueError, match="ema_decay"):
        hparams.GCMC(ema_decay=1.0)
    graphs = graph_data.load(data_lib.load_data_info(str(tiny["data"])))
    users, items, ratings = graph_data.split_pairs(graphs.info, "train")
    batch = graph_data.pair_batch(graphs.graph("train"), {"user_index": tf.constant(users),
                                                           "item_index": tf.constant(items),
                                                           "rating": tf.constant(ratings)})
    plain = gcmc.build_model(hparams.GCMC(hidden_dim=40, out_dim=8), graphs.model_info)
    plain(batch)
    plain.track_averages()
    assert plain.averages == []  # ema_decay 0: no averages, evaluation uses the weights as they are
    model = gcmc.build_model(hparams.GCMC(hidden_dim=40, out_dim=8, dropout=0.2, ema_decay=0.6), graphs.model_info)
    model.compile(optimizer=tf.keras.optimizers.Adam(0.05))
    model(batch)
    model.track_averages()
    assert len(model.averages) == len(model.trainable_variables) >= 6
    expected = [v.numpy() for v in model.trainable_variables]
    steps = tf.data.Dataset.from_tensors(batch).repeat()
    for step in range(1, 5):
        model.fit(steps, steps_per_epoch=1, epochs=1, verbose=0)
        decay = min(0.6, (1 + step) / (10 + step))  # 0.18, 0.25, 0.31, then 0.6 (warmed up)
        expected = [decay * a + (1 - decay) * w.numpy() for a, w in zip(expected, model.trainable_variables)]
    for average, value in zip(model.averages, expected):
        np.testing.assert_allclose(average.numpy(), value, rtol=1e-5, atol=1e-6)
    current = [v.numpy() for v in model.trainable_variables]
    assert max(np.abs(c - e).max() for c, e in zip(current, expected)) > 1e-3  # the average is not the weights
    logits = model(batch).numpy()
    with model.averaged_weights():
        for weight, value in zip(model.trainable_variables, expected):
            np.testing.assert_allclose(weight.numpy(), value, rtol=1e-5, atol=1e-6)
        averaged_logits = model(batch).numpy()
    for weight, value in zip(model.trainable_variables, current):
        np.testing.assert_array_equal(weight.numpy(), value)  # restored exactly after the block
    assert np.abs(averaged_logits - logits).max() > 1e-4
    np.testing.assert_array_equal(model(batch).numpy(), logits)
    # The averages are weights of the model: the kept epoch's weights and a relaunch's backup carry them.
    assert all(any(a is w for w in model.weights) for a in model.averages)


@pytest.mark.slow
def test_sampled_fit_with_side_features_learns(tiny):
    """The sampled path (4 edges per seed and level; exact evaluation in chunks) with the side-feature layer."""
    train_mean = np.mean([r for _, _, r, _ in tiny["train"]])
    baseline = float(np.sqrt(np.mean([(r - train_mean) ** 2 for _, _, r, _ in tiny["test"]])))
    result = run_experiment("movielens_gcmc_side.yaml", tiny["data"], tiny["root"] / "sampled", *FIT,
                            "hparams.sampled=true", "hparams.fanout=4", "hparams.eval_batch_pairs=16",
                            "train.refit=false")
    assert result.test["rmse"] < 0.75 * baseline, (result.test, baseline)
    assert result.config["hparams"]["side_features"] is True and result.cluster["steps_per_epoch"] == 5


def test_in_memory_pairs_are_a_new_permutation_every_epoch():
    """The full-graph input: every row once per epoch, a fresh order each epoch, the same order for the same seed."""
    from trainer import rating_graph as graph_data

    pairs = {"user_index": np.arange(10, dtype=np.int64), "item_index": np.arange(10, 20, dtype=np.int64),
             "rating": np.linspace(1, 5, 10).astype(np.float32)}

    def epochs(seed, count=3, batch=4):
        batches = list(graph_data.pair_dataset(pairs, batch, seed=seed).take(count * 3))
        assert [int(b["rating"].shape[0]) for b in batches] == [4, 4, 2] * count  # the last batch of an epoch is smaller
        out = []
        for e in range(count):
            part = batches[3 * e:3 * e + 3]
            users = np.concatenate([b["user_index"].numpy() for b in part])
            items = np.concatenate([b["item_index"].numpy() for b in part])
            assert sorted(users.tolist()) == list(range(10))
            np.testing.assert_array_equal(items, users + 10)  # rows stay whole
            out.append(users.tolist())
        return out

    first = epochs(seed=3)
    assert first == epochs(seed=3)
    assert len({tuple(e) for e in first}) == 3  # reshuffled every epoch
    assert first != epochs(seed=4)


@pytest.mark.slow
def test_in_memory_pairs_split_the_shards_between_input_pipelines(tiny):
    from trainer import data as data_lib, rating_graph as graph_data

    info = data_lib.load_data_info(str(tiny["data"]))
    files = info.files("train")
    users, items, ratings = graph_data.split_pairs(info, "train")
    whole = graph_data.memory_pairs(info, files)
    np.testing.assert_array_equal(whole["user_index"], users)
    np.testing.assert_array_equal(whole["rating"], ratings)
    parts = [graph_data.memory_pairs(info, files, 2, k) for k in range(2)]
    assert all(p["rating"].size for p in parts)
    rows = lambda d: sorted(zip(d["user_index"].tolist(), d["item_index"].tolist()))  # noqa: E731
    assert sorted(rows(parts[0]) + rows(parts[1])) == rows(whole)
    with pytest.raises(data_lib.DataError, match="shards"):
        graph_data.memory_pairs(info, files, len(files) + 1, 0)
