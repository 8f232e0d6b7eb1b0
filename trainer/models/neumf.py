"""Neural Matrix Factorization (He et al., "Neural Collaborative Filtering", WWW 2017, sec. 3.4).

A GMF branch and an MLP branch with their own embeddings; their last layers are
concatenated into one logit layer. With ``pretrained_gmf_dir`` and
``pretrained_mlp_dir`` (finished GMF and MLP jobs, e.g. from
``python -m workflows.ncf_pretrain``) both branches start from those models and the
logit layer from ``[alpha * h_gmf, (1 - alpha) * h_mlp]`` (paper eq. 13, alpha 0.5).

With ``history_length`` > 0 each branch's user vector also adds a pool of the
user's latest train items (``ranking_base.UserHistory``, FISM-style, weights
halving every ``history_half_life`` later interactions): the next item a user
picks is most like the last few, which a per-user embedding learns only slowly.
"""
from __future__ import annotations


import tensorflow as tf
import yaml

from trainer import config as config_lib
from trainer import hparams, models
from trainer.models import gmf, mlp, ranking_base
from trainer.models.ranking_base import REQUIRED_FEATURES  # noqa: F401  (registry reads it here)


Config = hparams.NeuMF  # hyperparameters and defaults: trainer/hparams.py (TF-free)


class NeuMF(ranking_base.PointwiseRankingModel):
    def __init__(self, config: Config, num_users: int, num_items: int, global_batch_size: int):
        super().__init__(num_users, num_items, config.num_negatives, global_batch_size, l2_embedding=config.l2_embedding)
        self.config = config
        self.gmf = gmf.GMFTower(num_users, num_items, config.embedding_dim, config.init_stddev, config.seed, name="gmf")
        self.mlp = mlp.MLPTower(num_users, num_items, config.layers, config.init_stddev, config.seed, name="mlp")
        self.prediction = tf.keras.layers.Dense(1, kernel_initializer="lecun_uniform", name="prediction")
        # One pool for both branches: its first embedding_dim columns join the GMF user
        # vector, the rest (layers[0] / 2) the MLP one.
        self.user_history = None
        if config.history_length:
            self.user_history = ranking_base.UserHistory(
                num_users, num_items, config.embedding_dim + config.layers[0] // 2, config.init_stddev,
                config.seed + 20, name="history")

    def set_user_history(self, items, weights) -> None:
        """The users' latest train items and weights (``TrainItems.history``), before the first call."""
        self.user_history.set_history(items, weights)

    def score(self, users, items):
        gmf_offset = mlp_offset = None
        if self.user_history is not None:
            gmf_offset, mlp_offset = tf.split(self.user_history(users, items), [self.config.embedding_dim, -1], -1)
        return tf.squeeze(self.prediction(tf.concat(
            [self.gmf(users, items, gmf_offset), self.mlp(users, items, mlp_offset)], -1)), -1)

    def embedding_penalty(self, users, items):
        penalty = self.gmf.penalty(users, items) + self.mlp.penalty(users, items)
        return penalty if self.user_history is None else penalty + self.user_history.penalty(items)


def _load_pretrained(job_dir: str, expected_model: str, info):
    """Rebuilds a finished GMF/MLP job's model and loads the weights it kept (``checkpoints/selected``)."""
    job_dir = job_dir.rstrip("/")
    config_path = f"{job_dir}/config.resolved.yaml"
    if not tf.io.gfile.exists(config_path):
        raise config_lib.ConfigError(f"{config_path} is missing: is {job_dir} a finished {expected_model} job?")
    with tf.io.gfile.GFile(config_path) as handle:
        resolved = yaml.safe_load(handle)
    if resolved.get("model") != expected_model:
        raise config_lib.ConfigError(f"{job_dir} is a {resolved.get('model')} job; expected {expected_model}")
    checkpoint = f"{job_dir}/checkpoints/selected"
    if not tf.io.gfile.exists(checkpoint + ".index"):
        raise config_lib.ConfigError(f"no {checkpoint}: is the {expected_model} job finished?")
    module = models.REGISTRY[expected_model].module()
    pretrained = module.build_model(config_lib.model_config(resolved), info, 1)
    pretrained({"user_index": tf.zeros([1], tf.int64), "item_index": tf.zeros([1], tf.int64)})
    pretrained.load_weights(checkpoint).expect_partial()
    return pretrained


def build_model(config: Config, info, global_batch_size: int) -> NeuMF:
    model = NeuMF(config, info.num_users, info.num_items, global_batch_size)
    if not config.pretrained_gmf_dir:
        return model
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
