"""Bayesian probabilistic matrix factorization trained by Gibbs sampling.

Salakhutdinov & Mnih, "Bayesian Probabilistic Matrix Factorization using Markov
Chain Monte Carlo" (ICML 2008), with biases, in the form libFM's MCMC uses:

``r(u, i) ~ N(mu + b_u + b_i + p_u . q_i, 1 / alpha)``, every user row
``[b_u, p_u]`` and item row ``[b_i, q_i]`` drawn from a Gaussian whose
per-dimension mean and precision have a Normal-Gamma hyperprior (the diagonal
form of the paper's Normal-Wishart), and ``alpha`` a Gamma hyperprior. ``mu`` is
the train mean tf.Transform computed. One sweep samples every user row given
the items, every item row given the users (each a ``K+1``-dimensional Gaussian:
batched Cholesky in TensorFlow), the hyperparameters and the noise.

Why not SGD + a TFRS Task (``trainer.models.mf``): averaging the prediction over
the posterior removes the regularisation tuning that bounds SGD MF (validation
RMSE 0.917 on a split of u1.base after a sweep, 0.907 here with only K chosen),
and there is no gradient loop for Keras ``fit`` to own. The
posterior-mean predictor is still a matrix factorization: the mean of
``p_u^s . q_i^s`` over the ``S`` kept samples equals the dot product of the
samples concatenated and scaled by ``1/sqrt(S)``. ``fit`` writes those into an
ordinary ``mf.MatrixFactorization``, so evaluation, the raw-id SavedModel and
serving are exactly the SGD model's.

Gibbs sampling is one chain in one process: the trainer refuses it under
several workers (see ``trainer.experiment``).
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import tensorflow as tf

from trainer import hparams
from trainer.models import mf

REQUIRED_FEATURES = mf.REQUIRED_FEATURES


Config = hparams.BayesianMF  # hyperparameters and defaults: trainer/hparams.py (TF-free)


def build_model(config: Config, info, global_batch_size: int) -> mf.MatrixFactorization:
    """The MF whose weights ``fit`` fills with the kept posterior samples."""
    return mf.MatrixFactorization(
        mf.Config(embedding_dim=config.embedding_dim * config.kept_samples, l2_embedding=0.0, l2_bias=0.0,
                  init_stddev=0.0, seed=config.seed),
        num_users=info.num_users,
        num_items=info.num_items,
        rating_mean=info.rating_mean,
        rating_range=(info.rating_min, info.rating_max),
        global_batch_size=global_batch_size,
    )


def _load(info, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from trainer import data

    return data.rating_arrays(info, split)


class _Sampler(tf.Module):
    """State and one Gibbs sweep; every draw comes from one seeded generator."""

    def __init__(self, config: Config, users, items, ratings, num_users: int, num_items: int, mu: float):
        super().__init__()
        self.c = config
        self.num_users, self.num_items = num_users, num_items
        self.mu = tf.constant(mu, tf.float32)
        chunks = range(0, max(1, len(ratings)), config.chunk_rows)
        self.chunks = [
            (tf.constant(users[s : s + config.chunk_rows]), tf.constant(items[s : s + config.chunk_rows]),
             tf.constant(ratings[s : s + config.chunk_rows]))
            for s in chunks
        ]
        self.rng = tf.random.Generator.from_seed(config.seed)
        d = config.embedding_dim + 1  # column 0: the bias
        self.user_rows = tf.Variable(self.rng.normal([num_users, d], stddev=config.init_stddev))
        self.item_rows = tf.Variable(self.rng.normal([num_items, d], stddev=config.init_stddev))
        self.alpha = tf.Variable(1.0)

    def _gamma(self, shape_param, rate):
        seed = self.rng.make_seeds(1)[:, 0]
        return tf.random.stateless_gamma(tf.shape(rate), seed, alpha=shape_param, beta=rate)

    def _hyper(self, rows):
        """Per-dimension hyper-mean and hyper-precision given the rows (Normal-Gamma posterior)."""
        c = self.c
        n = tf.cast(tf.shape(rows)[0], tf.float32)
        mean = tf.reduce_mean(rows, 0)
        scatter = tf.reduce_sum(tf.square(rows - mean), 0)
        rate = c.prior_rate + 0.5 * scatter + 0.5 * c.prior_mean_strength * n * tf.square(mean) / (c.prior_mean_strength + n)
        precision = self._gamma(c.prior_shape + n / 2, rate)
        hyper_mean = n * mean / (c.prior_mean_strength + n) + self.rng.normal(tf.shape(mean)) / tf.sqrt(
            precision * (c.prior_mean_strength + n))
        return hyper_mean, precision

    def _side(self, count: int, own, other_rows, own_index: int, other_index: int, residual_of):
        """Samples every row of one side given the other side's rows.

        ``own_index`` / ``other_index``: which column of a chunk (users 0, items 1)
        indexes this side / the other side.
        """
        d = self.c.embedding_dim + 1
        hyper_mean, hyper_precision = self._hyper(own)
        precision = tf.zeros([count, d, d])
        rhs = tf.zeros([count, d])
        for chunk in self.chunks:
            index, other, residual = chunk[own_index], chunk[other_index], residual_of(chunk)
            # Design row per rating: [1, factors of the other side]; target: the rest of the prediction.
            x = tf.concat([tf.ones_like(residual)[:, None], tf.gather(other_rows, other)[:, 1:]], axis=1)
            precision += tf.math.unsorted_segment_sum(x[:, :, None] * x[:, None, :], index, count)
            rhs += tf.math.unsorted_segment_sum(x * residual[:, None], index, count)
        precision = self.alpha * precision + tf.linalg.diag(hyper_precision)
        rhs = self.alpha * rhs + hyper_precision * hyper_mean
        cholesky = tf.linalg.cholesky(precision)
        mean = tf.linalg.cholesky_solve(cholesky, rhs[:, :, None])
        noise = tf.linalg.triangular_solve(cholesky, self.rng.normal([count, d, 1]), lower=True, adjoint=True)
        return tf.squeeze(mean + noise, -1)

    def predict(self, users, items):
        u = tf.gather(self.user_rows, users)
        i = tf.gather(self.item_rows, items)
        return self.mu + u[:, 0] + i[:, 0] + tf.reduce_sum(u[:, 1:] * i[:, 1:], -1)

    @tf.function
    def sweep(self):
        """Users given items, items given users, then the noise precision; returns the sample's train RMSE."""
        self.user_rows.assign(self._side(
            self.num_users, self.user_rows, self.item_rows, 0, 1,
            lambda ch: ch[2] - self.mu - tf.gather(self.item_rows[:, 0], ch[1])))
        self.item_rows.assign(self._side(
            self.num_items, self.item_rows, self.user_rows, 1, 0,
            lambda ch: ch[2] - self.mu - tf.gather(self.user_rows[:, 0], ch[0])))
        squared = tf.add_n([tf.reduce_sum(tf.square(ch[2] - self.predict(ch[0], ch[1]))) for ch in self.chunks])
        n = tf.cast(tf.add_n([tf.size(ch[2]) for ch in self.chunks]), tf.float32)
        self.alpha.assign(self._gamma(self.c.prior_shape + n / 2, self.c.prior_rate + 0.5 * squared))
        return tf.sqrt(squared / n)


def fit(model: mf.MatrixFactorization, config: Config, info,
        on_sweep: Callable[[int, dict[str, float]], None] | None = None,
        splits: tuple[str, ...] = ("train",)) -> dict[str, list[float]]:
    """Runs the chain and writes the posterior-mean predictor into ``model``.

    Returns:
      Per-sweep ``rmse`` (of the rows trained on: ``splits``) and ``val_rmse`` (valid
      rows, when there are any and they are not trained on) of the predictor as of that sweep: the current sample during burn-in,
      the running posterior mean after. Like Keras' validation curve, val_rmse
      is monitoring only: nothing is chosen with it.
    """
    loaded = [_load(info, split) for split in splits]
    users, items, ratings = (np.concatenate(parts) for parts in zip(*loaded))
    # Valid rows of a refit may hold ids the train vocabulary lacks (the OOV index): nothing to sample for them.
    known = (users < info.num_users) & (items < info.num_items)
    users, items, ratings = users[known], items[known], ratings[known]
    if ratings.size == 0:
        raise ValueError("bayesian_mf: no train rows")
    # valid is monitored per sweep unless it is trained on (train.refit)
    eval_users, eval_items, eval_ratings = (
        _load(info, "valid") if "valid" not in splits else (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)))
    lo, hi = info.rating_min, info.rating_max
    sampler = _Sampler(config, users, items, ratings, info.num_users, info.num_items, info.rating_mean)
    post = config.sweeps - config.burn_in
    keep = set((config.burn_in + np.linspace(0, post - 1, config.kept_samples).round()).astype(int).tolist())
    kept_users, kept_items = [], []
    known_eval = (eval_users < info.num_users) & (eval_items < info.num_items)
    train_sum, eval_sum = np.zeros(ratings.size), np.zeros(eval_ratings.size)
    history: dict[str, list[float]] = {"rmse": [], "val_rmse": []}

    def rmse(predicted, actual):
        return float(np.sqrt(np.mean((np.clip(predicted, lo, hi) - actual) ** 2)))

    started = time.time()
    for sweep in range(config.sweeps):
        sampler.sweep()
        # The predictor if the chain stopped here: the current sample during
        # burn-in, the mean over the samples since burn-in afterwards.
        averaged = max(0, sweep - config.burn_in + 1)
        train_now = sampler.predict(users, items).numpy()
        eval_now = np.full(eval_ratings.size, info.rating_mean)  # unknown ids: mu (monitoring only)
        if known_eval.any():
            eval_now[known_eval] = sampler.predict(eval_users[known_eval], eval_items[known_eval]).numpy()
        if averaged:
            train_sum += train_now
            eval_sum += eval_now
            train_now, eval_now = train_sum / averaged, eval_sum / averaged
        history["rmse"].append(rmse(train_now, ratings))
        if eval_ratings.size:
            history["val_rmse"].append(rmse(eval_now, eval_ratings))
        if sweep in keep:
            kept_users.append(sampler.user_rows.numpy())
            kept_items.append(sampler.item_rows.numpy())
        if on_sweep is not None:
            on_sweep(sweep, {k: v[-1] for k, v in history.items() if v})
        if config.log_every and ((sweep + 1) % config.log_every == 0 or sweep + 1 == config.sweeps):
            # Printed like Keras' per-epoch lines (not logging.info, which the trainer hides without --verbose).
            print(f"bayesian_mf: sweep {sweep + 1}/{config.sweeps}, "
                  + ", ".join(f"{k} {v[-1]:.4f}" for k, v in history.items() if v)
                  + f", {time.time() - started:.1f} s", flush=True)
    _write_posterior_mean(model, np.stack(kept_users), np.stack(kept_items))
    if not history["val_rmse"]:
        del history["val_rmse"]
    return history


def _write_posterior_mean(model: mf.MatrixFactorization, users: np.ndarray, items: np.ndarray) -> None:
    """[S, rows, K+1] samples -> the MF tables (row ``num_*`` is the OOV row, left zero)."""
    samples = users.shape[0]

    def factors(rows):  # [S, n, K] -> [n, S*K] / sqrt(S)
        return np.transpose(rows[:, :, 1:], (1, 0, 2)).reshape(rows.shape[1], -1) / np.sqrt(samples)

    def table(values, extra_rows=1):
        return np.concatenate([values, np.zeros((extra_rows,) + values.shape[1:], values.dtype)]).astype(np.float32)

    model.user_embedding.set_weights([table(factors(users))])
    model.item_embedding.set_weights([table(factors(items))])
    model.user_bias.set_weights([table(users[:, :, :1].mean(0))])
    model.item_bias.set_weights([table(items[:, :, :1].mean(0))])
