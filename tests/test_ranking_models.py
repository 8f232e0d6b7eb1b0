"""Ranking models on a tiny leave-one-out pipeline output: fits, sampling, evaluation, serving."""
import json

import numpy as np
import pytest

from beam_pipelines import movielens
from tests.conftest import METRICS_TOP_LEVEL, run_experiment
from trainer import models

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]
RANKING_MODELS = sorted(name for name, spec in models.REGISTRY.items() if spec.task == "ranking")
TINY = ["train.epochs=1", "train.batch_size=32", "train.shuffle_buffer=1000", "train.learning_rate=0.01"]


def _implicit_rows(num_users=40, num_items=30, per_user=10, seed=5):
    """Two user groups that each consume one half of the catalogue (planted structure)."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(1, num_users + 1):
        half = np.arange(1, num_items // 2 + 1) + (user % 2) * (num_items // 2)
        for n, item in enumerate(rng.choice(half, size=per_user, replace=False)):
            rows.append((user, int(item), 1, 1_000_000 + user * 100 + n))
    return rows


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_rank")
    rows = _implicit_rows()
    (root / "u.tsv").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    data = root / "data"
    movielens.run(
        ["--input", str(root / "u.tsv"), "--format", "tab", "--split", "leave_one_out", "--num-negatives", "10",
         "--output", str(data), "--num-shards", "2"],
        save_main_session=False,
    )
    by_user = {}
    for u, i, _, t in rows:
        by_user.setdefault(u, []).append((t, i))
    held_out = {u: {i for _, i in sorted(ts)[-2:]} for u, ts in by_user.items()}  # test = latest, valid = 2nd latest
    train = {}
    for u, i, _, t in rows:
        if i not in held_out[u]:
            train.setdefault(str(u), set()).add(str(i))
    valid = {str(u): str(sorted(ts)[-2][1]) for u, ts in by_user.items()}
    return {"root": root, "data": data, "train": train, "valid": valid}


def _run(config_name, data, job, *overrides):
    import tensorflow as tf

    tf.keras.backend.clear_session()
    return run_experiment(f"movielens_{config_name}.yaml", data, job, *TINY, *overrides, environ={})


@pytest.fixture(scope="module")
def fitted(tiny):
    return {name: _run(name, tiny["data"], tiny["root"] / f"job-{name}") for name in RANKING_MODELS}


def test_registry_has_the_ranking_models():
    assert RANKING_MODELS == ["bpr", "gmf", "mlp", "neumf"]
    assert models.REGISTRY["mf"].task == "rating"


@pytest.mark.parametrize("name", RANKING_MODELS)
def test_one_epoch_fit_writes_ranking_metrics(fitted, tiny, name):
    result = fitted[name]
    assert result.task == "ranking"
    for split in ("valid", "test"):
        evaluation = getattr(result, split)
        assert evaluation["num_users"] == 40 and evaluation["num_candidates"] == 11
        for key in ("hr@10", "ndcg@10", "mrr", "hit@1", "hit@5", "full_recall@10", "full_ndcg@10"):
            assert 0.0 <= evaluation[key] <= 1.0, key
    assert np.isfinite(result.history["loss"]).all()
    # The epoch is chosen on a valid metric (exact, measured after every epoch), never on test: the task's
    # default ndcg@10, or the config's train.monitor (BPR: mrr, the metric its search space tunes).
    expected = result.config["train"].get("monitor") or "ndcg@10"
    assert result.selection["monitor"] == expected and f"val_{expected}" in result.history
    assert "val_ndcg@10" in result.history
    assert "val_mrr" in result.history and not any(k.startswith("test") for k in result.history)
    assert (tiny["root"] / f"job-{name}" / "export" / "saved_model.pb").exists()
    written = json.loads((tiny["root"] / f"job-{name}" / "metrics.json").read_text())
    assert set(written) == METRICS_TOP_LEVEL and written["test"] == result.test


def test_models_learn_the_planted_groups(tiny):
    # Negatives of the other group are easy: a few epochs put the positive near the top.
    result = _run("bpr", tiny["data"], tiny["root"] / "job-bpr-long", "train.epochs=40", "train.learning_rate=0.05", "hparams.embedding_dim=8")
    assert result.test["mrr"] > 0.5  # random ranking of 1 + 10 candidates gives ~0.27


def test_sampled_negatives_are_never_train_items(tiny):

    from schemas import ratings as F
    from trainer import data, ranking

    info = data.load_data_info(str(tiny["data"]))
    train_items = ranking.load_train_items(info)
    sampler = ranking.make_negative_sampler(train_items, num_negatives=8, seed=1)
    batches = data.local_dataset(info, "train", 64, keys=ranking.TRAIN_KEYS).map(sampler).repeat(2)
    owned = {u: set(train_items.user_items(u).tolist()) for u in range(info.num_users)}
    seen = []
    for batch in batches:
        users = batch[F.USER_INDEX].numpy()
        negatives = batch[ranking.SAMPLED_NEGATIVES].numpy()
        assert (batch[ranking.SAMPLED_NEGATIVES_MASK].numpy() == 1.0).all()
        for user, row in zip(users, negatives):
            assert not owned[user] & set(row.tolist())
            assert ((row >= 0) & (row < info.num_items)).all()
        seen.append(negatives)
    half = len(seen) // 2
    # Fresh draws each pass: the second epoch's negatives differ from the first's.
    assert any((a != b).any() for a, b in zip(seen[:half], seen[half:]))


def test_sampler_with_crowded_and_full_users():
    import tensorflow as tf

    from schemas import ratings as F
    from trainer import ranking

    num_items = 20
    users = np.array([0] * 19 + [1] * 20)  # user 0 lacks only item 7; user 1 has everything
    items = np.array([i for i in range(20) if i != 7] + list(range(20)))
    train_items = ranking.TrainItems.from_pairs(users, items, 2, num_items)
    sampler = ranking.make_negative_sampler(train_items, num_negatives=50, seed=0)
    out = sampler({F.USER_INDEX: tf.constant([0, 1], tf.int64), F.ITEM_INDEX: tf.constant([0, 0], tf.int64)})
    assert (out[ranking.SAMPLED_NEGATIVES].numpy()[0] == 7).all()
    assert out[ranking.SAMPLED_NEGATIVES_MASK].numpy().tolist() == [[1.0] * 50, [0.0] * 50]


def test_recency_counts_later_interactions_and_weights_the_positives():
    import tensorflow as tf

    from schemas import ratings as F
    from trainer import ranking

    # User 0 re-rated item 1 (at 5 and at 20): the pair counts from its latest rating.
    users = np.array([0, 0, 0, 0, 1, 1])
    items = np.array([0, 1, 2, 1, 3, 4])
    timestamps = np.array([10, 20, 20, 5, 7, 7])
    train_items = ranking.TrainItems.from_pairs(users, items, 2, 5, timestamps)
    assert train_items.later.tolist() == [2, 0, 0, 0, 0]  # pairs (0,0) (0,1) (0,2) (1,3) (1,4); ties share 0
    assert train_items.recency_weights(2.0, 0.5).tolist() == [0.75, 1.0, 1.0, 1.0, 1.0]

    batch = {F.USER_INDEX: tf.constant([0, 0, 1, 1], tf.int64), F.ITEM_INDEX: tf.constant([0, 2, 3, 5], tf.int64)}
    weighted = ranking.make_negative_sampler(train_items, 2, seed=0, recency_half_life=2.0, recency_floor=0.5)(batch)
    assert weighted[ranking.SAMPLE_WEIGHT].numpy().tolist() == [0.75, 1.0, 1.0, 1.0]  # item 5 is the OOV id
    assert ranking.SAMPLE_WEIGHT not in ranking.make_negative_sampler(train_items, 2, seed=0)(batch)
    with pytest.raises(ValueError, match="timestamps"):
        ranking.TrainItems.from_pairs(users, items, 2, 5).recency_weights(2.0, 0.0)


@pytest.mark.parametrize("name", RANKING_MODELS)
def test_losses_weight_each_positive_with_its_negatives(name):
    import types

    import tensorflow as tf

    from schemas import ratings as F
    from trainer import ranking

    spec = models.REGISTRY[name]
    model = spec.module().build_model(spec.config_class(), types.SimpleNamespace(num_users=3, num_items=6), 2)
    features = {
        F.USER_INDEX: tf.constant([0, 1], tf.int64), F.ITEM_INDEX: tf.constant([1, 2], tf.int64),
        ranking.SAMPLED_NEGATIVES: tf.constant([[3, 4, 5, 0], [4, 5, 0, 1]], tf.int64),
        ranking.SAMPLED_NEGATIVES_MASK: tf.ones([2, 4]),
    }

    def loss(weights=None):
        extra = {} if weights is None else {ranking.SAMPLE_WEIGHT: tf.constant(weights)}
        return float(model.compute_loss({**features, **extra}))

    assert loss([1.0, 1.0]) == pytest.approx(loss())
    # The loss is a sum over positives (each with its negatives): the two halves add up to the whole.
    assert loss([1.0, 0.0]) + loss([0.0, 1.0]) == pytest.approx(loss(), rel=1e-5)
    assert loss([0.5, 0.5]) == pytest.approx(loss() / 2, rel=1e-5)


def test_recency_hparams_are_checked():
    from trainer import hparams

    with pytest.raises(ValueError, match="recency_half_life"):
        hparams.NeuMF(recency_half_life=-1)
    with pytest.raises(ValueError, match="recency_floor"):
        hparams.BPR(recency_floor=1.5)
    with pytest.raises(ValueError, match="history_length"):
        hparams.NeuMF(history_length=-1)


def test_recommend_round_trip_with_raw_ids(fitted, tiny):
    import tensorflow as tf

    loaded = tf.saved_model.load(str(tiny["root"] / "job-gmf" / "export"))
    recommend, score = loaded.signatures["recommend"], loaded.signatures["score"]
    # The shipped GMF config refits on train + valid, so what a user has is train plus the valid positive.
    assert fitted["gmf"].config["train"]["refit"]
    has = {user: items | {tiny["valid"][user]} for user, items in tiny["train"].items()}
    users = sorted(has, key=int)[:6]
    out = recommend(user_id=tf.constant(users + ["999999"]), k=tf.constant(5))
    item_ids = out["item_id"].numpy().astype(str)
    assert item_ids.shape == (7, 5)
    assert out["known_user"].numpy().tolist() == [True] * 6 + [False]
    assert out["popular_fallback"].numpy().tolist() == [False] * 6 + [True]
    for user, recommended, scores in zip(users, item_ids[:6], out["score"].numpy()[:6]):
        assert not has[user] & set(recommended), "recommended an item the user has in what the model trained on"
        assert len(set(recommended)) == 5 and (np.diff(scores) <= 0).all()
        # The recommend scores are the score signature's for the same raw ids.
        direct = score(user_id=tf.constant([user] * 5), item_id=tf.constant(list(recommended)))["score"].numpy()
        np.testing.assert_allclose(direct, scores, rtol=1e-4, atol=1e-5)
        # ... and nothing unowned that was left out scores higher than the 5th.
        others = [str(i) for i in range(1, 31) if str(i) not in has[user] and str(i) not in recommended]
        rest = score(user_id=tf.constant([user] * len(others)), item_id=tf.constant(others))["score"].numpy()
        assert (rest <= scores[-1] + 1e-6).all()
    # Unknown user: the most popular items of what the model trained on, scored by their counts.
    counts = {}
    for items in has.values():
        for item in items:
            counts[item] = counts.get(item, 0) + 1
    popular = out["score"].numpy()[6]
    assert popular.tolist() == sorted(counts.values(), reverse=True)[:5]
    assert [counts[i] for i in item_ids[6]] == popular.tolist()


def test_neumf_starts_from_pretrained_gmf_and_mlp(fitted, tiny):
    import tensorflow as tf

    from trainer import config as config_lib
    from trainer import data
    from trainer.models import neumf

    info = data.load_data_info(str(tiny["data"]))
    base = config_lib.resolve(str(REPO / "configs" / "movielens_neumf_pretrained.yaml"), [
        f"hparams.pretrained_gmf_dir={tiny['root'] / 'job-gmf'}", f"hparams.pretrained_mlp_dir={tiny['root'] / 'job-mlp'}",
    ])
    model = neumf.build_model(config_lib.model_config(base), info, 32)
    gmf = neumf._load_pretrained(str(tiny["root"] / "job-gmf"), "gmf", info)
    mlp = neumf._load_pretrained(str(tiny["root"] / "job-mlp"), "mlp", info)
    users = tf.constant([0, 1, 2, 3], tf.int64)
    items = tf.constant([4, 3, 2, 1], tf.int64)
    # alpha 0.5: the NeuMF logit starts as the mean of the two pre-trained logits.
    expected = 0.5 * gmf.score(users, items) + 0.5 * mlp.score(users, items)
    np.testing.assert_allclose(model.score(users, items).numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)
    # With a pooled history the branches start pre-trained too; the pool is empty until the task sets it.
    pooled = neumf.build_model(config_lib.model_config({**base, "hparams": {**base["hparams"], "history_length": 5}}), info, 32)
    np.testing.assert_allclose(pooled.score(users, items).numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)
    pooled.set_user_history(np.full((info.num_users + 1, 1), 1, np.int64), np.ones((info.num_users + 1, 1), np.float32))
    assert not np.allclose(pooled.score(users, items).numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(config_lib.ConfigError, match="is a mlp job"):
        neumf._load_pretrained(str(tiny["root"] / "job-mlp"), "gmf", info)


def test_leaderboard_table(fitted, tiny, tmp_path):
    from workflows import leaderboard

    data = str(tiny["data"])
    rows = leaderboard.run_board(
        str(tmp_path / "board"),
        [(str(REPO / "configs" / "movielens_gmf.yaml"), data), (str(REPO / "configs" / "movielens_mlp.yaml"), data)],
        TINY, pretrained_neumf=[(str(REPO / "configs" / "movielens_neumf_pretrained.yaml"), data)],
    )
    assert [r["name"] for r in rows] == ["00-gmf", "01-mlp", "02-neumf-pretrained"]
    table = (tmp_path / "board" / "leaderboard.md").read_text()
    assert "| model | task | data | valid | test | kept epoch | train s | examples/s |" in table
    assert "| neumf | ranking | data | hr@10 " in table
    saved = json.loads((tmp_path / "board" / "leaderboard.json").read_text())
    assert saved["rows"][2]["test"]["hr@10"] == rows[2]["test"]["hr@10"]
    assert saved["rows"][2]["valid"]["ndcg@10"] == rows[2]["valid"]["ndcg@10"]


def test_leaderboard_entry_overrides_split_only_before_keys():
    from workflows import leaderboard

    assert leaderboard.parse_entry("c.yaml@hparams.layers=[8,4],train.epochs=3") == (
        "c.yaml", ["hparams.layers=[8,4]", "train.epochs=3"]
    )
    assert leaderboard.parse_entry("c.yaml") == ("c.yaml", [])


def test_refit_adds_the_valid_positives_to_what_each_user_has(tiny, tmp_path):
    result = _run("bpr", tiny["data"], tmp_path / "job", "train.epochs=3", "train.refit=true")
    refit = result.selection["refit"]
    assert refit["epochs"] == result.selection["best_epoch"] and refit["train_examples"] == 40 * 9
    import tensorflow as tf

    recommend = tf.saved_model.load(str(tmp_path / "job" / "export")).signatures["recommend"]
    users = sorted(tiny["train"], key=int)
    out = recommend(user_id=tf.constant(users), k=tf.constant(9)).get("item_id").numpy().astype(str)
    for user, recommended in zip(users, out):  # neither a train item nor the valid positive is recommended
        assert not (tiny["train"][user] | {tiny["valid"][user]}) & set(recommended)


def test_history_keeps_each_users_latest_items_with_halving_weights():
    from trainer import ranking

    # User 0: items 0 (t 10), 1 (t 20), 2 (t 20), 3 (t 30); user 1: item 4. Two users, 5 items.
    users, items = np.array([0, 0, 0, 0, 1]), np.array([0, 1, 2, 3, 4])
    train_items = ranking.TrainItems.from_pairs(users, items, 2, 5, np.array([10, 20, 20, 30, 7]))
    history, weights = train_items.history(3, 1.0)
    # Latest first, ties by item; the oldest (item 0) falls outside length 3; padding is the OOV item 5.
    assert history.tolist() == [[3, 1, 2], [4, 5, 5], [5, 5, 5]]
    assert weights.tolist() == [[1.0, 0.5, 0.5], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    assert train_items.history(2, 0.0)[1].tolist() == [[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]]
    with pytest.raises(ValueError, match="timestamps"):
        ranking.TrainItems.from_pairs(users, items, 2, 5).history(3, 1.0)


def test_user_history_pools_the_history_without_the_scored_item():
    import tensorflow as tf

    from trainer.models import ranking_base

    pool = ranking_base.UserHistory(num_users=2, num_items=5, dim=3, stddev=1.0, seed=0)
    history = np.array([[3, 1, 2], [4, 5, 5], [5, 5, 5]])
    weights = np.array([[1.0, 0.5, 0.25], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], np.float32)
    pool.set_history(history, weights)
    users, items = tf.constant([0, 0, 0, 1, 1, 2, 0]), tf.constant([0, 3, 2, 4, 0, 1, 5])
    pooled = pool(users, items).numpy()
    table = pool.item_embedding.table().numpy()

    def mean(rows, w):
        return (np.asarray(w)[:, None] * table[rows]).sum(0) / sum(w)

    np.testing.assert_allclose(pooled[0], mean([3, 1, 2], [1.0, 0.5, 0.25]), rtol=1e-5)  # 0 is not in the history
    np.testing.assert_allclose(pooled[1], mean([1, 2], [0.5, 0.25]), rtol=1e-5)  # the scored item is left out
    np.testing.assert_allclose(pooled[2], mean([3, 1], [1.0, 0.5]), rtol=1e-5)
    np.testing.assert_allclose(pooled[3], 0.0)  # user 1's history is only the scored item
    np.testing.assert_allclose(pooled[4], table[4], rtol=1e-5)
    np.testing.assert_allclose(pooled[5], 0.0)  # the OOV user has no history
    np.testing.assert_allclose(pooled[6], mean([3, 1, 2], [1.0, 0.5, 0.25]), rtol=1e-5)  # the OOV item


def test_neumf_pools_the_history_of_what_it_trains_on(tiny):
    import tensorflow as tf

    from schemas import ratings as F
    from trainer import config as config_lib
    from trainer import tasks

    config = config_lib.resolve(str(REPO / "configs" / "movielens_neumf.yaml"),
                                [*TINY, "hparams.history_length=20", "hparams.history_half_life=2"])
    spec = models.REGISTRY["neumf"]
    task = tasks.task_class(spec.task)(spec=spec, hparams=config_lib.model_config(config),
                                        train=config_lib.train_config(config), data_dir=str(tiny["data"]))
    output = task.info.transform_output()
    items = np.array([v.decode() for v in output.vocabulary_by_name(F.ITEM_VOCAB)])
    users = np.array([v.decode() for v in output.vocabulary_by_name(F.USER_VOCAB)])

    def histories(model):
        raw = model.user_history.items.numpy()[:-1]
        return [set(items[row[row < len(items)]]) for row in raw]

    model = task.build_model(2)
    assert histories(model) == [tiny["train"][u] for u in users]  # 8 train items < length 20
    task.train_provider(4, ("train", "valid"))  # a refit trains on train + valid: the history has valid too
    refit = task.build_model(2)
    assert histories(refit) == [tiny["train"][u] | {tiny["valid"][u]} for u in users]
    batch = {"user_index": tf.constant([0, 1], tf.int64), "item_index": tf.constant([0, 1], tf.int64)}
    assert not np.allclose(model(batch).numpy(), task._module.build_model(
        config_lib.model_config(config), task.info, 2)(batch).numpy())  # the pool moves the scores
