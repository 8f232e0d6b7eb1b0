"""Model registry: an explicit map from config names to models, their task and hyperparameters.

The registry itself imports no TensorFlow: each entry names its hyperparameter
class (``trainer.hparams``, validated before TensorFlow loads), the kind of
problem it solves (``task``: the ``trainer.tasks`` entry that owns its inputs,
evaluation and export) and the module that builds it. ``ModelSpec.module()``
imports that module when the model is actually built.

A model module exposes ``Config`` (its hparams class) and ``build_model(config,
data, global_batch_size)``; a model that does not train by Keras ``fit`` (a Gibbs
sampler) also exposes ``fit(model, config, data, on_step) -> history`` and is
registered with ``own_fit=True``.
"""
from __future__ import annotations

import dataclasses
import importlib
from types import ModuleType

from trainer import hparams


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One registered model.

    Attributes:
      name: the config's ``model`` value.
      config_class: its hyperparameters (a frozen dataclass in ``trainer.hparams``).
      task: the ``trainer.tasks`` kind (``rating``, ``ranking``, ``graph_classification``, ``graph_rating``).
      module_name: the module with ``build_model`` (and ``fit`` when ``own_fit``).
      own_fit: trains itself (no Keras fit, no optimizer; one process only).
    """

    name: str
    config_class: type
    task: str
    module_name: str
    own_fit: bool = False

    def module(self) -> ModuleType:
        """Imports and returns the model's module (TensorFlow is imported here, not at registry import)."""
        return importlib.import_module(self.module_name)


REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("mf", hparams.MF, "rating", "trainer.models.mf"),
        ModelSpec("bayesian_mf", hparams.BayesianMF, "rating", "trainer.models.bayesian_mf", own_fit=True),
        ModelSpec("gmf", hparams.GMF, "ranking", "trainer.models.gmf"),
        ModelSpec("mlp", hparams.MLP, "ranking", "trainer.models.mlp"),
        ModelSpec("neumf", hparams.NeuMF, "ranking", "trainer.models.neumf"),
        ModelSpec("bpr", hparams.BPR, "ranking", "trainer.models.bpr"),
        ModelSpec("hetero_gnn", hparams.HeteroGNN, "graph_classification", "trainer.models.hetero_gnn"),
        ModelSpec("gcmc", hparams.GCMC, "graph_rating", "trainer.models.gcmc"),
        ModelSpec("playlist_bpr", hparams.PlaylistBPR, "playlist_ranking", "trainer.models.playlist_bpr"),
        ModelSpec("playlist_tracks_bpr", hparams.PlaylistTracksBPR, "playlist_ranking",
                  "trainer.models.playlist_tracks_bpr"),
    )
}
