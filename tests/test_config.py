"""Config layering: defaults -> YAML -> --set; unknown keys are errors."""
import pytest

from trainer import config as config_lib


def test_defaults_come_from_the_model_dataclass():
    config = config_lib.resolve()
    assert config["model"] == "mf"
    assert config["hparams"]["embedding_dim"] == 64
    assert config["train"]["epochs"] == config_lib.TRAIN_DEFAULTS["epochs"]


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
    with pytest.raises(config_lib.ConfigError, match="unknown section"):
        config_lib.resolve(None, ["optim.lr=1"])
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
