"""Layered training configuration: defaults -> YAML -> ``--set key=value``.

Owns the config shape and its validation. A config has three sections:

* ``model``: the registry name of the model (``trainer.models.REGISTRY``);
* ``train``: everything about the fit loop (epochs, batch, optimizer, ...);
* ``hparams``: the chosen model's own hyperparameters, whose defaults and valid
  keys come from that model's frozen config dataclass.

Unknown keys anywhere are an error that lists the valid ones. The resolved config
is what gets saved next to the model as ``config.resolved.yaml``.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any, Mapping, Sequence

import yaml

TRAIN_DEFAULTS: dict[str, Any] = {
    "epochs": 10,
    "batch_size": 1024,  # per replica; the global batch is this x replicas
    "learning_rate": 0.005,
    "optimizer": "adam",  # adam | adagrad | sgd
    "lr_schedule": "constant",  # constant | cosine (decays to 0 over all steps)
    "shuffle_buffer": 100_000,
    "seed": 0,
    "steps_per_epoch": None,  # None: one pass over the train rows of dataset.json
    "eval_batch_size": 8192,
    "validate_every_epoch": True,
    "log_every_steps": 0,  # 0: Keras' per-epoch progress only
}


class ConfigError(ValueError):
    """A config the user must fix; the message says what and lists valid choices."""


def _coerce(text: str) -> Any:
    """Parses a ``--set`` value the way YAML would (numbers, booleans, null, lists)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _merge_section(base: dict[str, Any], update: Mapping[str, Any], section: str) -> None:
    unknown = sorted(set(update) - set(base))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(f'{section}.{k}' for k in unknown)}; "
            f"valid {section} keys: {', '.join(sorted(base))}"
        )
    base.update(update)


def hparam_defaults(model_name: str) -> dict[str, Any]:
    from trainer import models

    if model_name not in models.REGISTRY:
        raise ConfigError(f"unknown model {model_name!r}; registered models: {', '.join(models.REGISTRY)}")
    defaults = dataclasses.asdict(models.REGISTRY[model_name].config_class())
    # Tuples (e.g. MLP layer sizes) as lists: what YAML gives back, and safe_dump can write.
    return {k: list(v) if isinstance(v, tuple) else v for k, v in defaults.items()}


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """``["train.epochs=3", "model=mf"]`` -> nested dict."""
    nested: dict[str, Any] = {}
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"--set expects key=value, got {override!r}")
        key, value = override.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) > 2 or not all(parts):
            raise ConfigError(f"--set key {key!r} must be 'model', 'train.<key>' or 'hparams.<key>'")
        if len(parts) == 1:
            nested[parts[0]] = _coerce(value)
        else:
            nested.setdefault(parts[0], {})[parts[1]] = _coerce(value)
    return nested


def resolve(yaml_path: str | None = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Builds the full config.

    Args:
      yaml_path: a YAML file with any of the sections (read with tf.io.gfile, so gs:// works).
      overrides: ``key=value`` strings applied last.

    Returns:
      ``{"model": str, "train": {...}, "hparams": {...}}`` with every key present.

    Raises:
      ConfigError: unknown sections or keys, or an unknown model.
    """
    layers = load_layers(yaml_path, overrides)
    sections = {"model", "train", "hparams"}
    for layer in layers:
        unknown = sorted(set(layer) - sections)
        if unknown:
            raise ConfigError(f"unknown section(s) {', '.join(unknown)}; valid: {', '.join(sorted(sections))}")
    model_name = "mf"
    for layer in layers:
        model_name = layer.get("model", model_name)
    config = {"model": model_name, "train": copy.deepcopy(TRAIN_DEFAULTS), "hparams": hparam_defaults(model_name)}
    merge_layers(config, layers)
    return config


def load_layers(yaml_path: str | None, overrides: Sequence[str]) -> list[dict[str, Any]]:
    """The config layers in the order they apply: the YAML mapping (if any), then ``--set``.

    Raises:
      ConfigError: a missing or malformed YAML, or a malformed override.
    """
    layers: list[dict[str, Any]] = []
    if yaml_path:
        import tensorflow as tf

        if not tf.io.gfile.exists(yaml_path):
            raise ConfigError(f"config file {yaml_path} does not exist")
        with tf.io.gfile.GFile(yaml_path) as handle:
            loaded = yaml.safe_load(handle) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{yaml_path} must hold a mapping with sections model/train/hparams")
        layers.append(loaded)
    layers.append(parse_overrides(overrides))
    return layers


def merge_layers(config: dict[str, Any], layers: Sequence[Mapping[str, Any]]) -> None:
    """Applies the ``train`` and ``hparams`` sections of each layer onto ``config`` (unknown keys: ConfigError)."""
    for layer in layers:
        for section in ("train", "hparams"):
            update = layer.get(section) or {}
            if not isinstance(update, dict):
                raise ConfigError(f"section {section} must be a mapping")
            _merge_section(config[section], update, section)


def model_config(config: Mapping[str, Any]):
    """The frozen dataclass of the chosen model, built from ``config['hparams']``."""
    from trainer import models

    return models.REGISTRY[config["model"]].config_class(**config["hparams"])


def dump(config: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(config), sort_keys=False)
