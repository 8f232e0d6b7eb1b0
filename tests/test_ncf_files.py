"""The NCF paper's file trio: .test.negative parsing, candidates in the pipeline, train rebuild."""
import glob

import pytest

from beam_pipelines import movielens as ml
from rawdata import ncf_rebuild


def test_parse_negative_line():
    assert ml.parse_negative_line("(3,25)\t7\t08\t9") == ("3", "25", ["7", "8", "9"])
    with pytest.raises(ml.RowError, match=r"expected '\(user,item\)'"):
        ml.parse_negative_line("3,25\t7")
    with pytest.raises(ml.RowError, match="no negatives"):
        ml.parse_negative_line("(3,25)\t")
    with pytest.raises(ml.RowError, match="negative item id 'x'"):
        ml.parse_negative_line("(3,25)\tx")


def test_attach_given_negatives_drops_the_positive_and_needs_a_match():
    rating = ml.Rating("3", "25", 4.0, 1, "f", 1, ml.TEST_INPUT_SIDE, "")
    assert ml.attach_given_negatives(rating, {"3": ("25", ["7", "25", "9"])}) == ["7", "9"]
    assert ml.attach_given_negatives(rating, {"3": ("26", ["7"])}) == []
    assert ml.attach_given_negatives(rating, {}) == []


def test_pipeline_uses_the_listed_negatives_as_test_candidates_and_samples_valid_ones(tmp_path):
    import tensorflow as tf
    import tensorflow_transform as tft

    train = [f"{u}\t{i}\t4\t{100 + i}" for u in range(4) for i in range(6) if i != u]
    # items 6..9 exist and users 0..3 never rated them; item 5 (every user's valid row) keeps a train row
    train += [f"9\t{i}\t3\t{100 + i}" for i in (5, 6, 7, 8, 9)]
    (tmp_path / "x.train.rating").write_text("\n".join(train) + "\n")
    (tmp_path / "x.test.rating").write_text("".join(f"{u}\t{u}\t5\t999\n" for u in range(4)))
    negatives = {u: [str((u + k) % 6) for k in (1, 2, 3)] for u in range(4)}
    negatives[0].append("0")  # the positive listed among its own negatives (a quirk of the real file)
    (tmp_path / "x.test.negative").write_text("".join(f"({u},{u})\t" + "\t".join(n) + "\n" for u, n in negatives.items()))
    summary = ml.run([
        "--input", str(tmp_path / "x.train.rating"), "--test-input", str(tmp_path / "x.test.rating"),
        "--negatives-input", str(tmp_path / "x.test.negative"), "--split", "given", "--output", str(tmp_path / "out"),
        "--num-shards", "2", "--num-negatives", "3",
    ])
    assert summary["split"]["given_negatives"]["listed_negatives_holding_the_positive"] == 1
    assert summary["split"]["given_negatives"]["test_rows_without_listed_negatives"] == 0
    assert summary["counts"]["test_negatives"] == 12 and summary["accounting"]["balanced"]
    # valid: each user's latest --input rating, with 3 sampled negatives the user never rated
    assert summary["counts"]["valid_rows"] == 5 and summary["counts"]["valid_negatives"] == 5 * 3
    assert summary["split"]["valid"]["num_negatives"] == 3
    output = tft.TFTransformOutput(str(tmp_path / "out"))
    users = [u.decode() for u in output.vocabulary_by_name("user_id")]
    items = [i.decode() for i in output.vocabulary_by_name("item_id")]
    spec = output.transformed_feature_spec()
    seen = {}
    for split in ("test", "valid"):
        for record in tf.data.TFRecordDataset(sorted(glob.glob(str(tmp_path / "out" / split / "*.gz"))),
                                              compression_type="GZIP"):
            example = tf.io.parse_single_example(record, spec)
            user = users[int(example["user_index"])]
            lookup = lambda i: items[i] if i < len(items) else "OOV"  # noqa: E731  (item 9: user 9's valid row)
            candidates = [lookup(int(i)) for i in tf.sparse.to_dense(example["negative_item_index"]).numpy()]
            seen[(split, user)] = (lookup(int(example["item_index"])), sorted(candidates))
    assert {u: v[1] for (s, u), v in seen.items() if s == "test"} == {
        str(u): sorted(n for n in negatives[u] if n != str(u)) for u in range(4)}
    for u in range(4):
        positive, candidates = seen[("valid", str(u))]
        assert positive == "5" and len(candidates) == 3 and set(candidates) <= {"6", "7", "8", "OOV"}


@pytest.mark.real_data
def test_rebuilt_train_file_matches_the_published_head(shared_data):
    ratings = shared_data / "ml-1m-partial" / "ratings.dat.prefix.gz"
    head_path = shared_data / "ncf" / "ml-1m.train.rating.head_users0-188"
    if not ratings.exists() or not head_path.exists():
        pytest.skip("ml-1m-partial / ncf files not in shared data")
    lines, users = ncf_rebuild.rebuild(str(ratings), str(shared_data / "ncf" / "ml-1m.test.rating"), 2998)
    assert users == set(range(2998)) and len(lines) == 484517
    head = head_path.read_text().splitlines()
    mine = [line.rstrip("\n") for line in lines if int(line.split("\t")[0]) <= 188]
    assert sorted(mine) == sorted(head)  # the same rows
    # the same user and timestamp sequence (only the order among equal timestamps may differ)
    assert [(r.split("\t")[0], r.split("\t")[3]) for r in mine] == [(r.split("\t")[0], r.split("\t")[3]) for r in head]
