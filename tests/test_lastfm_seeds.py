"""workflows.lastfm_seeds: the statistics by hand, variant parsing, and the command on a generated graph."""
from __future__ import annotations

import json
import math

import pytest

from workflows import lastfm_seeds


def _split(valid_acc, valid_f1, test_acc, test_f1):
    return {"valid": {"accuracy": valid_acc, "macro_f1": valid_f1}, "test": {"accuracy": test_acc, "macro_f1": test_f1}}


def test_aggregate_by_hand():
    per_seed = {
        lastfm_seeds.BASELINE: {0: _split(0.80, 0.70, 0.80, 0.70), 1: _split(0.90, 0.80, 0.84, 0.74)},
        "gnn": {0: _split(0.82, 0.71, 0.83, 0.72), 1: _split(0.92, 0.81, 0.85, 0.77)},
    }
    table = lastfm_seeds.aggregate(per_seed)
    accuracy = table["gnn"]["test_accuracy"]
    assert accuracy["mean"] == pytest.approx(0.84) and accuracy["n"] == 2
    assert accuracy["std"] == pytest.approx(math.sqrt(2 * 0.01 ** 2))  # deviations +-0.01, n - 1 = 1
    assert accuracy["se"] == pytest.approx(accuracy["std"] / math.sqrt(2))
    # Paired by seed: differences 0.03 and 0.01 (accuracy), 0.02 and 0.03 (macro-F1).
    assert table["gnn"]["test_accuracy_minus_baseline"]["mean"] == pytest.approx(0.02)
    assert table["gnn"]["test_accuracy_minus_baseline"]["se"] == pytest.approx(0.01)
    assert table["gnn"]["test_macro_f1_minus_baseline"]["mean"] == pytest.approx(0.025)
    assert "test_accuracy_minus_baseline" not in table[lastfm_seeds.BASELINE]
    text = lastfm_seeds.markdown(table, [0, 1])
    assert "| gnn | 0.8700 ± 0.0707 (0.0500) |" in text and "+0.0200 (0.0100)" in text


def test_variants_and_errors(capsys):
    variant = lastfm_seeds.parse_variant("cs=configs/lastfm_hetero_gnn.yaml@hparams.cs_smooth_alpha=0.5,train.epochs=3")
    assert variant == lastfm_seeds.Variant("cs", "configs/lastfm_hetero_gnn.yaml",
                                           ("hparams.cs_smooth_alpha=0.5", "train.epochs=3"))
    common = ["--edges", "e", "--targets", "t", "--work", "/tmp/unused"]
    for extra, message in ((["--variant", "configs/x.yaml"], "--variant expects NAME=CONFIG"),
                           (["--seeds", "0"], "at least 2 seeds"),
                           (["--variant", "a=configs/lastfm_hetero_gnn.yaml@hparams.nope=1"], "unknown key(s) hparams.nope")):
        assert lastfm_seeds.main([*common, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("lastfm_seeds: error: ") and message in err and "\n" not in err, err


@pytest.mark.slow  # ~30 s: two pipelines and two short fits
def test_two_seeds_on_a_generated_graph(tmp_path, capsys):
    from rawdata import synth

    paths = synth.write_lastfm(synth.generate_lastfm(200, seed=5, num_classes=3, avg_likes=2, follow_homophily=0.8),
                               str(tmp_path))
    work = tmp_path / "seeds"
    code = lastfm_seeds.main([
        "--edges", paths["edges.csv"], "--targets", paths["target.csv"], "--work", str(work), "--seeds", "0,1",
        "--num-classes", "3", "--pipeline-arg=--num-shards=1",
        "--variant", "cs=configs/lastfm_hetero_gnn.yaml@train.epochs=2,train.batch_size=32,hparams.hidden_dim=16,"
                     "train.ensemble_size=1"])
    assert code == 0
    out = capsys.readouterr().out
    payload = json.loads((work / "seeds.json").read_text())
    assert list(payload["summary"]) == [lastfm_seeds.BASELINE, "cs", "cs: gnn", "cs: + correct and smooth",
                                        "cs: + prior correction"]
    assert (work / "seeds.md").read_text() in out
    for seed in (0, 1):
        metrics = json.loads((work / f"seed-{seed}" / "cs" / "metrics.json").read_text())
        assert payload["per_seed"]["cs"][str(seed)]["test"]["accuracy"] == metrics["test"]["accuracy"]
        assert metrics["dataset"]["split"]["seed"] == seed
    # Label propagation ran on each seed's own split: the two differ, and match the baseline module's split rule.
    from baselines import lastfm_label_propagation as lp

    users, labels, edges, _ = lp.read_graph(paths["edges.csv"], paths["target.csv"], 3)
    for seed in (0, 1):
        expected = lp.evaluate(users, labels, edges, seed, (0.8, 0.1, 0.1), 3, 0.9, 50)
        assert payload["per_seed"][lastfm_seeds.BASELINE][str(seed)]["test"]["accuracy"] == expected["test"]["accuracy"]
