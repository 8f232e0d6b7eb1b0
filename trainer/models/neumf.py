"""Neural Matrix Factorization (He et al., "Neural Collaborative Filtering", WWW 2017, sec. 3.4).

A GMF branch and an MLP branch with their own embeddings; their last layers are
concatenated into one logit layer. With ``pretrained_gmf_dir`` and
``pretrained_mlp_dir`` (finished GMF and MLP jobs, e.g. from
``python -m workflows.ncf_pretrain``) both branches start from those models and the
logit layer from ``[alpha * h_gmf, (1 - alpha) * h_mlp]`` (paper eq. 13, alpha 0.5).
"""
from __future__ import annotations

import dataclasses

import tensorflow as tf
import yaml

from trainer.models import gmf, mlp, ranking_base
from trainer.models.ranking_base import REQUIRED_FEATURES  # noqa: F401  (registry reads it here)


@dataclasses.dataclass(frozen=True)
class Config:
    embedding_dim: int = 16  # GMF branch factors
    layers: tuple[int, ...] = (64, 32, 16, 8)  # MLP branch
    num_negatives: int = 4
    l2_embedding: float = 0.0
    init_stddev: float = 0.01
    seed: int = 0
    pretrained_gmf_dir: str = ""  # a finished GMF job dir (its checkpoints/ and config.resolved.yaml)
    pretrained_mlp_dir: str = ""  # a finished MLP job dir
    alpha: float = 0.5  # weight of the GMF branch in the pre-trained logit layer

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))
        if bool(self.pretrained_gmf_dir) != bool(self.pretrained_mlp_dir):
            raise ValueError("set both pretrained_gmf_dir and pretrained_mlp_dir, or neither")


class NeuMF(ranking_base.PointwiseRankingModel):
    def __init__(self, config: Config, num_users: int, num_items: int, global_batch_size: int):
        super().__init__(num_users, num_items, config.num_negatives, global_batch_size, l2_embedding=config.l2_embedding)
        self.config = config
        self.gmf = gmf.GMFTower(num_users, num_items, config.embedding_dim, config.init_stddev, config.seed, name="gmf")
        self.mlp = mlp.MLPTower(num_users, num_items, config.layers, config.init_stddev, config.seed, name="mlp")
        self.prediction = tf.keras.layers.Dense(1, kernel_initializer="lecun_uniform", name="prediction")

    def score(self, users, items):
        return tf.squeeze(self.prediction(tf.concat([self.gmf(users, items), self.mlp(users, items)], -1)), -1)

    def embedding_penalty(self, users, items):
        return self.gmf.penalty(users, items) + self.mlp.penalty(users, items)


def _load_pretrained(job_dir: str, expected_model: str, info):
    """Rebuilds a finished GMF/MLP job's model and loads its last checkpoint."""
    from trainer import config as config_lib
    from trainer import models

    job_dir = job_dir.rstrip("/")
    with tf.io.gfile.GFile(f"{job_dir}/config.resolved.yaml") as handle:
        resolved = yaml.safe_load(handle)
    if resolved["model"] != expected_model:
        raise config_lib.ConfigError(f"{job_dir} is a {resolved['model']} job; expected {expected_model}")
    checkpoint = tf.train.latest_checkpoint(f"{job_dir}/checkpoints")
    if not checkpoint:
        raise config_lib.ConfigError(f"no checkpoint in {job_dir}/checkpoints: is the {expected_model} job finished?")
    spec = models.REGISTRY[expected_model]
    pretrained = spec.build_model(config_lib.model_config(resolved), info, 1)
    pretrained({"user_index": tf.zeros([1], tf.int64), "item_index": tf.zeros([1], tf.int64)})
    pretrained.load_weights(checkpoint).expect_partial()
    return pretrained


def build_model(config: Config, info, global_batch_size: int) -> NeuMF:
    model = NeuMF(config, info.num_users, info.num_items, global_batch_size)
    if not config.pretrained_gmf_dir:
        return model
    from trainer import config as config_lib

    gmf_model = _load_pretrained(config.pretrained_gmf_dir, "gmf", info)
    mlp_model = _load_pretrained(config.pretrained_mlp_dir, "mlp", info)
    if gmf_model.config.embedding_dim != config.embedding_dim or tuple(mlp_model.config.layers) != config.layers:
        raise config_lib.ConfigError(
            f"pre-trained shapes (gmf embedding_dim {gmf_model.config.embedding_dim}, mlp layers "
            f"{list(mlp_model.config.layers)}) differ from neumf's ({config.embedding_dim}, {list(config.layers)})"
        )
    model({"user_index": tf.zeros([1], tf.int64), "item_index": tf.zeros([1], tf.int64)})
    model.gmf.set_weights(gmf_model.tower.get_weights())
    model.mlp.set_weights(mlp_model.tower.get_weights())
    gmf_kernel, gmf_bias = gmf_model.prediction.get_weights()
    mlp_kernel, mlp_bias = mlp_model.prediction.get_weights()
    alpha = config.alpha
    model.prediction.set_weights([
        tf.concat([alpha * gmf_kernel, (1.0 - alpha) * mlp_kernel], 0).numpy(),
        alpha * gmf_bias + (1.0 - alpha) * mlp_bias,
    ])
    return model
