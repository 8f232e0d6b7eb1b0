"""Layered, typed training configuration: defaults -> YAML -> ``--set key=value``.

Owns the config shape and its validation. A config has three sections:

* ``model``: the registry name of the model (``trainer.models.REGISTRY``);
* ``train``: everything about the fit loop (``TrainConfig``: epochs, batch,
  optimizer, epoch selection, ...), the same keys for every model;
* ``hparams``: the chosen model's own hyperparameters, whose defaults, valid
  keys and types come from its frozen dataclass in ``trainer.hparams``.

Unknown keys anywhere are an error that lists the valid ones; a value of the
wrong type is an error that names the key and the expected type. One coercion
is documented and deliberate: an integer field takes a float with no fraction
(``16.0`` -> ``16``), because Vertex AI hyperparameter tuning sends discrete and
integer parameters as doubles. A float field also takes a numeric string
(PyYAML reads ``1e-3`` without a dot as a string).

Nothing here imports TensorFlow unless the YAML is on gs://, so a bad flag or
key is answered before TensorFlow loads. The resolved config is what gets
saved next to the model as ``config.resolved.yaml``.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from typing import Any, Mapping, Sequence

import yaml

SECTIONS = ("model", "train", "hparams")
OPTIMIZERS = ("adam", "lazy_adam", "adagrad", "sgd")
LR_SCHEDULES = ("constant", "cosine")
SPARSE_ALL_REDUCE = ("gather", "dense")


class ConfigError(ValueError):
    """A config the user must fix; the message says what and lists valid choices."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The fit loop, the same for every model.

    Attributes:
      epochs: epochs at most (a sampler's own ``hparams`` say how long it runs).
      batch_size: examples per replica and step; the global batch is this x replicas.
      learning_rate: the optimizer's (initial) learning rate.
      optimizer: ``adam``, ``lazy_adam``, ``adagrad`` or ``sgd`` (momentum 0.9). ``lazy_adam``
        (``trainer.optimizers.LazyAdam``): Adam whose sparse (embedding) updates touch only the
        rows in the batch; Keras' ``adam`` decays and moves every row of a table every step.
      lr_schedule: ``constant``, or ``cosine`` (decays to 0 over all steps).
      shuffle_buffer: examples in the shuffle buffer.
      seed: seed of initialisation (``tf.keras.utils.set_random_seed``), shuffling and sampling.
      steps_per_epoch: None: one pass over the train examples of dataset.json.
      eval_batch_size: batch of the exact valid/test evaluation.
      validate_every_epoch: measure ``valid`` after every epoch and keep the best
        epoch's weights (False: the last epoch is kept, nothing is chosen).
      patience: stop after this many epochs without a better monitored valid
        metric (None: run every epoch; the best epoch is still the one kept).
      monitor: the valid metric that chooses the epoch (None: the task's default,
        e.g. ``rmse`` for ratings, ``ndcg@10`` for ranking, ``accuracy`` for graphs).
      refit: after choosing on valid, train a fresh model on train + valid for the
        chosen number of epochs and export and test that one (rating and ranking
        models; the reported valid metrics stay the selection model's).
      ensemble_size: fits of the same config with seeds ``seed``, ``seed + 1``, ...
        (initialisation, dropout and shuffling), each with its own epoch chosen on
        valid; the kept model averages their class probabilities (graph
        classification only; 1: one fit).
      sparse_all_reduce: how several workers sum an embedding table's sparse gradient:
        ``gather`` (TensorFlow's all-gather of the batch rows) or ``dense`` (the ring
        all-reduce of the whole table: less data when the table has fewer rows than
        the workers' batches touch; ``trainer.optimizers.DenseAllReduce``). Not with
        ``lazy_adam``. One process: no effect.
      profile_steps: ``"FIRST,LAST"`` (1-based steps counted from the start of the fit): the
        TensorFlow profiler traces those steps into the TensorBoard log directory
        (``tensorboard --logdir JOB/tensorboard``, Profile tab; ``tools/profile_steps.py``
        prints where the step time goes). None: no profile.
    """

    epochs: int = 10
    batch_size: int = 1024
    learning_rate: float = 0.005
    optimizer: str = "adam"
    lr_schedule: str = "constant"
    shuffle_buffer: int = 100_000
    seed: int = 0
    steps_per_epoch: int | None = None
    eval_batch_size: int = 8192
    validate_every_epoch: bool = True
    patience: int | None = None
    monitor: str | None = None
    refit: bool = False
    ensemble_size: int = 1
    sparse_all_reduce: str = "gather"
    profile_steps: str | None = None

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        for name in ("epochs", "batch_size", "eval_batch_size", "ensemble_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1 or null, got {self.patience}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1 or null, got {self.steps_per_epoch}")
        if self.sparse_all_reduce not in SPARSE_ALL_REDUCE:
            raise ValueError(f"sparse_all_reduce must be one of {', '.join(SPARSE_ALL_REDUCE)}, "
                             f"got {self.sparse_all_reduce!r}")
        if self.sparse_all_reduce == "dense" and self.optimizer == "lazy_adam":
            raise ValueError("sparse_all_reduce: dense would hand lazy_adam a dense gradient, and it would then "
                             "update every row; use gather with lazy_adam")
        if self.profile_steps is not None:
            self.profile_range()  # raises on a malformed value

    def profile_range(self) -> tuple[int, int] | int:
        """``profile_steps`` as Keras' ``profile_batch`` (0: no profile)."""
        if self.profile_steps is None:
            return 0
        parts = [p.strip() for p in str(self.profile_steps).split(",")]
        if len(parts) != 2 or not all(p.isdigit() and int(p) >= 1 for p in parts):
            raise ValueError(f'profile_steps must be "FIRST,LAST" (steps >= 1; "N,N" for one step), '
                             f"got {self.profile_steps!r}")
        first, last = int(parts[0]), int(parts[1])
        if last < first:
            raise ValueError(f"profile_steps: LAST {last} is before FIRST {first}")
        return first, last


# --------------------------------------------------------------------------- typed values
def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return f"{_type_name(inner[0])} or null"
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(annotation)[0])}s"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(annotation, str(annotation))


def coerce(value: Any, annotation: Any, key: str) -> Any:
    """Checks ``value`` against a field's type and returns it in that type.

    Raises:
      ConfigError: a value of another type; the message names the key and the expected type.
    """
    def fail():
        raise ConfigError(f"{key}: expected {_type_name(annotation)}, got {value!r} ({type(value).__name__})")

    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return None if value is None else coerce(value, inner[0], key)
    if origin is tuple:
        (item_type, *_) = typing.get_args(annotation)
        if isinstance(value, str) and item_type is str:
            value = value.split("+")  # e.g. edge_sets=follows+likes
        if not isinstance(value, (list, tuple)):
            fail()
        return tuple(coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value))
    if annotation is bool:
        return value if isinstance(value, bool) else fail()
    if annotation is int:
        if isinstance(value, bool):
            fail()
        if isinstance(value, int):
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)  # Vertex AI sends discrete/integer parameters as doubles
        fail()
    if annotation is float:
        if isinstance(value, bool):
            fail()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                fail()
        fail()
    if annotation is str:
        return value if isinstance(value, str) else fail()
    return value


def build_dataclass(cls: type, values: Mapping[str, Any], section: str):
    """An instance of ``cls`` from plain values, every field type-checked.

    Raises:
      ConfigError: unknown keys, wrongly typed values, or a value ``__post_init__`` rejects.
    """
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(f'{section}.{k}' for k in unknown)}; "
                          f"valid {section} keys: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    typed = {k: coerce(v, hints[k], f"{section}.{k}") for k, v in values.items()}
    try:
        return cls(**typed)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{section}: {error}") from None


def as_plain(instance) -> dict[str, Any]:
    """A dataclass as YAML-friendly values (tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(instance).items()}


# --------------------------------------------------------------------------- layers
def _parse_value(text: str) -> Any:
    """Parses a ``--set`` value the way YAML would (numbers, booleans, null, lists)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """``["train.epochs=3", "model=mf"]`` -> nested dict.

    Raises:
      ConfigError: an override that is not ``key=value`` with a ``model``, ``train.*`` or ``hparams.*`` key.
    """
    nested: dict[str, Any] = {}
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"--set expects key=value, got {override!r}")
        key, value = override.split("=", 1)
        parts = key.strip().split(".")
        if parts[0] not in SECTIONS or len(parts) != (1 if parts[0] == "model" else 2) or not all(parts):
            raise ConfigError(f"--set key {key!r} must be 'model', 'train.<key>' or 'hparams.<key>'")
        if len(parts) == 1:
            nested["model"] = _parse_value(value)
        else:
            nested.setdefault(parts[0], {})[parts[1]] = _parse_value(value)
    return nested


def read_yaml(path: str) -> dict[str, Any]:
    """A config YAML (local, or gs:// through tf.io.gfile) as a mapping.

    Raises:
      ConfigError: a missing, unreadable or malformed file, or one that is not a mapping.
    """
    try:
        if path.startswith("gs://"):
            import tensorflow as tf  # only for gs://: local configs validate without TensorFlow

            if not tf.io.gfile.exists(path):
                raise ConfigError(f"config file {path} does not exist")
            with tf.io.gfile.GFile(path) as handle:
                text = handle.read()
        else:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        loaded = yaml.safe_load(text) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"config file {path} cannot be read: {error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path} must hold a mapping with sections {', '.join(SECTIONS)}")
    return loaded


def load_layers(yaml_path: str | None, overrides: Sequence[str]) -> list[dict[str, Any]]:
    """The config layers in the order they apply: the YAML mapping (if any), then ``--set``."""
    layers = [read_yaml(yaml_path)] if yaml_path else []
    layers.append(parse_overrides(overrides))
    for layer in layers:
        unknown = sorted(set(layer) - set(SECTIONS))
        if unknown:
            raise ConfigError(f"unknown section(s) {', '.join(unknown)}; valid: {', '.join(SECTIONS)}")
        for section in ("train", "hparams"):
            if not isinstance(layer.get(section) or {}, dict):
                raise ConfigError(f"section {section} must be a mapping")
    return layers


def resolve(yaml_path: str | None = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Builds and validates the full config.

    Args:
      yaml_path: a YAML file with any of the sections (local or gs://).
      overrides: ``key=value`` strings applied last.

    Returns:
      ``{"model": str, "train": {...}, "hparams": {...}}`` with every key present
      and every value of its field's type.

    Raises:
      ConfigError: unknown sections or keys, an unknown model, or a wrongly typed value.
    """
    from trainer import models

    layers = load_layers(yaml_path, overrides)
    model_name = "mf"
    for layer in layers:
        model_name = layer.get("model", model_name)
    if model_name not in models.REGISTRY:
        raise ConfigError(f"unknown model {model_name!r}; registered models: {', '.join(models.REGISTRY)}")
    train: dict[str, Any] = {}
    hparams: dict[str, Any] = {}
    for layer in layers:
        train.update(layer.get("train") or {})
        hparams.update(layer.get("hparams") or {})
    spec = models.REGISTRY[model_name]
    return {
        "model": model_name,
        "train": as_plain(build_dataclass(TrainConfig, train, "train")),
        "hparams": as_plain(build_dataclass(spec.config_class, hparams, "hparams")),
    }


def train_config(config: Mapping[str, Any]) -> TrainConfig:
    """The ``TrainConfig`` of a resolved config."""
    return build_dataclass(TrainConfig, config["train"], "train")


def model_config(config: Mapping[str, Any]):
    """The frozen hyperparameter dataclass of the chosen model, built from ``config['hparams']``."""
    from trainer import models

    return build_dataclass(models.REGISTRY[config["model"]].config_class, config["hparams"], "hparams")


def dump(config: Mapping[str, Any]) -> str:
    """The config as YAML (what ``config.resolved.yaml`` holds)."""
    return yaml.safe_dump(copy.deepcopy(dict(config)), sort_keys=False)
