"""Config layering: defaults -> YAML -> --set; unknown keys and wrongly typed values are errors."""
import pytest

from trainer import config as config_lib


def test_defaults_come_from_the_model_dataclass():
    config = config_lib.resolve()
    assert config["model"] == "mf"
    assert config["hparams"]["embedding_dim"] == 64
    assert config["train"]["epochs"] == config_lib.TrainConfig().epochs
    gnn = config_lib.resolve(None, ["model=hetero_gnn"])  # every model: the same train keys
    assert set(gnn["train"]) == set(config["train"]) and gnn["hparams"]["hidden_dim"] == 64


def test_yaml_then_set_layering(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 7\n  batch_size: 32\nhparams:\n  embedding_dim: 8\n")
    config = config_lib.resolve(str(path), ["train.epochs=3", "hparams.l2_bias=0.5", "train.steps_per_epoch=null"])
    assert config["train"]["epochs"] == 3  # --set wins over YAML
    assert config["train"]["batch_size"] == 32  # YAML wins over defaults
    assert config["hparams"]["embedding_dim"] == 8
    assert config["hparams"]["l2_bias"] == 0.5
    assert config["train"]["steps_per_epoch"] is None
    assert config_lib.model_config(config).embedding_dim == 8


def test_unknown_key_lists_valid_keys():
    with pytest.raises(config_lib.ConfigError) as error:
        config_lib.resolve(None, ["hparams.embeding_dim=3"])
    message = str(error.value)
    assert "hparams.embeding_dim" in message
    assert "embedding_dim" in message and "l2_embedding" in message


def test_unknown_section_and_model_and_bad_override(tmp_path):
    with pytest.raises(config_lib.ConfigError, match="must be 'model', 'train.<key>' or 'hparams.<key>'"):
        config_lib.resolve(None, ["optim.lr=1"])
    (tmp_path / "s.yaml").write_text("optim:\n  lr: 1\n")
    with pytest.raises(config_lib.ConfigError, match="unknown section"):
        config_lib.resolve(str(tmp_path / "s.yaml"))
    with pytest.raises(config_lib.ConfigError, match="registered models: mf"):
        config_lib.resolve(None, ["model=nope"])
    with pytest.raises(config_lib.ConfigError, match="key=value"):
        config_lib.resolve(None, ["train.epochs"])
    with pytest.raises(config_lib.ConfigError, match="does not exist"):
        config_lib.resolve(str(tmp_path / "missing.yaml"))


def test_dump_round_trips():
    import yaml

    config = config_lib.resolve(None, ["train.epochs=2"])
    assert yaml.safe_load(config_lib.dump(config)) == config


def test_every_registered_model_resolves_and_its_task_lists_its_metrics():
    from trainer import models, tasks

    for name, spec in models.REGISTRY.items():
        config = config_lib.resolve(None, [f"model={name}"])
        assert config_lib.model_config(config) == spec.config_class()
        task = tasks.task_class(spec.task)
        assert {m.name: m.goal for m in task.metrics} == tasks.METRICS[spec.task]
        assert task.default_monitor in tasks.METRICS[spec.task]


def test_coercion_rules():
    coerce = config_lib.coerce
    assert coerce(16.0, int, "k") == 16 and coerce("1e-3", float, "k") == 0.001
    assert coerce(["follows", "likes"], tuple[str, ...], "k") == ("follows", "likes")
    assert coerce("follows+likes", tuple[str, ...], "k") == ("follows", "likes")
    assert coerce(None, int | None, "k") is None
    for value, annotation in ((True, int), (16.5, int), ("3", int), (1, bool), ("x", float), ([1, "a"], tuple[int, ...])):
        with pytest.raises(config_lib.ConfigError, match="expected"):
            coerce(value, annotation, "k")


def test_gnn_yaml_is_the_defaults_with_use_ids_off_and_the_chosen_post_processing():
    from pathlib import Path

    yaml_path = str(Path(__file__).resolve().parents[1] / "configs" / "lastfm_hetero_gnn.yaml")
    config = config_lib.resolve(yaml_path)
    # What the YAML's comment says it changes, and nothing else: use_ids off, and the Correct and Smooth /
    # prior correction values chosen on valid (README, LastFM section).
    chosen = ["hparams.use_ids=false", "hparams.correct_and_smooth=true", "hparams.cs_correct_alpha=0.9",
              "hparams.cs_smooth_alpha=0.7", "hparams.prior_correction=0.4"]
    assert config["hparams"] == config_lib.resolve(None, ["model=hetero_gnn", *chosen])["hparams"]
    # The epoch of each fit chosen on the GNN's own valid accuracy; three fits averaged.
    assert (config["train"]["monitor"], config["train"]["ensemble_size"]) == ("gnn_accuracy", 3)
    with pytest.raises(config_lib.ConfigError, match="ensemble_size must be >= 1"):
        config_lib.resolve(yaml_path, ["train.ensemble_size=0"])
    with pytest.raises(config_lib.ConfigError, match="unknown edge set"):
        config_lib.resolve(yaml_path, ["hparams.edge_sets=follows+knows"])
    with pytest.raises(config_lib.ConfigError, match="conv must be 'simple' or 'gatv2'"):
        config_lib.resolve(yaml_path, ["hparams.conv=gcn"])


def test_lastfm_edge_sets_in_hparams_match_the_schema():
    from schemas import lastfm
    from trainer import hparams

    assert hparams.LASTFM_EDGE_SETS == tuple(lastfm.EDGE_SETS)


def test_profile_steps_become_keras_profile_batch():
    def train(value):
        overrides = [] if value is None else [f"train.profile_steps={value}"]
        return config_lib.train_config(config_lib.resolve(None, overrides))

    assert train(None).profile_range() == 0
    assert train("10,15").profile_range() == (10, 15)
    assert train("7,7").profile_range() == (7, 7)
    for bad, words in (("a", "FIRST,LAST"), ("5,3", "before FIRST"), ("0,2", "FIRST,LAST"), ("12", "a string")):
        with pytest.raises(config_lib.ConfigError, match=words):
            train(bad)
