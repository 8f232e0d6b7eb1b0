"""The task interface: what differs between kinds of problem, behind one experiment.

Shaped after TF-GNN's ``runner/interfaces.py`` (a Task owns its losses, metrics
and head; DatasetProviders own the input; a Trainer owns the fit) and TF
Recommenders' ``tasks/`` (layers that own the loss). ``trainer.experiment.run``
is the only orchestrator; it asks the task, in this order:

1. ``Task(spec=..., hparams=..., train=..., data_dir=...)``: read and check the
   pipeline output (schema, splits, shard files, example counts); errors are
   ``trainer.data.DataError`` with one line that says what to run.
2. ``build_model(global_batch_size)`` inside the strategy scope, then
   ``compile(model, optimizer)`` (the task wires its loss and Keras metrics) and
   ``warm_up(model)`` (variables exist before ``BackupAndRestore`` looks).
3. ``train_provider(per_replica_batch)``: a ``runner.DatasetProvider`` whose
   dataset is one input pipeline's part of ``train`` (``steps_per_epoch`` from
   ``examples("train")``).
4. after every epoch, ``evaluate(model, "valid")`` (exact; chooses the epoch by
   ``monitor``); after fit, on the lead, ``evaluate`` of ``valid`` and ``test``.
5. ``export(model, export_dir)`` on every worker (saving runs collectives), and
   ``plots(model, plots_dir)`` on the lead.

A model that trains itself (``ModelSpec.own_fit``: a Gibbs sampler) skips 2-4's
Keras parts: the experiment calls ``build_model`` then the model module's
``fit(model, config, task.data, on_step)`` and continues with 4-5.

``metrics`` names what ``evaluate`` returns that tuning may report (always on
``valid``): the same names go to metrics.json, the leaderboard, sweeps and the
Vertex AI hypertune metric.
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar

from trainer import config as config_lib
from trainer import data as data_lib


@dataclasses.dataclass(frozen=True)
class Metric:
    """A metric a task reports on ``valid`` and ``test``.

    Attributes:
      name: the key in ``evaluate``'s result (``rmse``, ``ndcg@10``, ``accuracy``).
      goal: ``min`` or ``max``: which way is better.
    """

    name: str
    goal: str


class Task(abc.ABC):
    """One kind of problem: its inputs, evaluation, export and tunable metrics.

    Attributes (class level):
      kind: the registry's ``ModelSpec.task`` value.
      schema: the ``dataset.json`` ``schema`` it reads (a ``schemas`` module name).
      pipeline: the command that writes such data (for error messages).
      metrics: the metrics ``evaluate`` returns that tuning may report.
      default_monitor: the metric that chooses the epoch unless ``train.monitor`` says otherwise.
    """

    kind: ClassVar[str]
    supports_refit: ClassVar[bool] = False  # train_provider takes ("train", "valid") (``train.refit``)
    supports_ensemble: ClassVar[bool] = False  # ``ensemble(models)`` averages fits (``train.ensemble_size``)
    schema: ClassVar[str]
    pipeline: ClassVar[str]
    metrics: ClassVar[tuple[Metric, ...]]
    default_monitor: ClassVar[str]

    def __init__(self, *, spec, hparams, train: config_lib.TrainConfig, data_dir: str):
        self.spec = spec
        self.hparams = hparams
        self.train = train
        self.data_dir = data_dir.rstrip("/")

    # ------------------------------------------------------------------ metrics
    @classmethod
    def metric(cls, name: str) -> Metric:
        """The task's metric called ``name``.

        Raises:
          config_lib.ConfigError: the task has no such metric (the message lists them).
        """
        for metric in cls.metrics:
            if metric.name == name:
                return metric
        raise config_lib.ConfigError(
            f"{name!r} is not a {cls.kind} metric; valid: {', '.join(m.name for m in cls.metrics)}")

    @property
    def monitor(self) -> Metric:
        """The valid metric that chooses the epoch (``train.monitor`` or the task's default)."""
        return self.metric(self.train.monitor or self.default_monitor)

    # ------------------------------------------------------------------ data
    dataset: data_lib.Dataset  # the checked pipeline output, set by every subclass

    def examples(self, split: str) -> int:
        """Examples of ``split`` as the pipeline counted them (``train``: sets ``steps_per_epoch``)."""
        return self.dataset.examples(split)

    @property
    def data(self) -> Any:
        """What the model builder and an own ``fit`` read about the data (a task-specific info object)."""
        return None

    @abc.abstractmethod
    def train_provider(self, per_replica_batch: int, splits: tuple[str, ...] = ("train",)):
        """A ``runner.DatasetProvider`` of shuffled batches of ``splits`` for one input pipeline."""

    # ------------------------------------------------------------------ model
    @abc.abstractmethod
    def build_model(self, global_batch_size: int):
        """The model (called inside the strategy scope)."""

    def compile(self, model, optimizer) -> None:
        """Wires the optimizer and the task's losses/metrics (default: the model owns its loss, as TFRS models do)."""
        model.compile(optimizer=optimizer)

    def ensemble(self, models: list):
        """One model from several fits of the same config (``train.ensemble_size``; ``supports_ensemble`` tasks)."""
        raise NotImplementedError(f"{self.kind} tasks do not support train.ensemble_size > 1")

    @abc.abstractmethod
    def warm_up(self, model) -> None:
        """Calls the model once so its variables exist (BackupAndRestore restores into built variables)."""

    # ------------------------------------------------------------------ evaluation and export
    @abc.abstractmethod
    def evaluate(self, model, split: str) -> dict[str, Any]:
        """Exact metrics of ``split`` (``valid`` or ``test``), every example once, in this process."""

    @abc.abstractmethod
    def export(self, model, export_dir: str) -> None:
        """Writes the serving SavedModel (raw ids in) to ``export_dir``."""

    def plots(self, model, plots_dir: str, result: dict[str, Any]) -> list[str]:
        """Task-specific PNGs (confusion matrix, ...) beside the loss curves; returns the paths written."""
        return []

    def describe(self, values: dict[str, Any]) -> str:
        """One console line of a split's metrics."""
        shown = [m.name for m in self.metrics if m.name in values]
        return ", ".join(f"{name}={values[name]:.4f}" for name in shown) or "no examples"


def traced(model, name: str, make):
    """One ``tf.function`` per model and purpose, kept on the model: evaluated every epoch, traced once.

    Args:
      model: the Keras model the function closes over.
      name: what the function is for (``predict``, ``score``).
      make: builds the ``tf.function`` the first time.
    """
    cache = model.__dict__.setdefault("_evaluation_functions", {})
    if name not in cache:
        cache[name] = make()
    return cache[name]
