"""Optimizers the Keras library does not have in the form a big embedding table needs.

``LazyAdam`` (``train.optimizer: lazy_adam``): Adam whose sparse update touches
only the rows in the batch.

Why not ``tf.keras.optimizers.Adam`` for embedding tables: Keras 2's Adam
(``tf_keras.optimizers.Adam.update_step``) takes the sparse gradient of an
embedding lookup (``tf.IndexedSlices``) but still decays the first and second
moments of *every* row (``m.assign_add(-m * (1 - beta_1))``, the same for
``v``) and moves *every* row (``variable.assign_sub(m * alpha / (sqrt(v) +
eps))``): about ten full passes over the table and its two slots per step.
For the playlist BPR at 100k generated users (602k x 128 playlist table,
batch 16384, 5 x 16384 playlist rows touched per step at most) that is the
bulk of a step (README "Playlists", "Results on generated data"). The
updates of rows that are not in the batch are momentum alone: the row keeps
moving along its decaying ``m``.

``LazyAdam`` is the "lazy" Adam of TensorFlow Addons' ``LazyAdam`` and
PyTorch's ``SparseAdam``: for a sparse gradient with rows ``I`` (duplicates
summed by the base optimizer's ``_deduplicate_sparse_grad`` first)::

    m[I] = beta_1 * m[I] + (1 - beta_1) * g
    v[I] = beta_2 * v[I] + (1 - beta_2) * g ** 2
    w[I] -= lr * sqrt(1 - beta_2 ** t) / (1 - beta_1 ** t) * m[I] / (sqrt(v[I]) + eps)

with the global step ``t`` in the bias correction; rows outside ``I`` are left
as they are (no decay, no momentum step). This is *not* Adam's maths for the
rows outside the batch, so results differ from ``adam``; a dense gradient
(e.g. the track table of ``playlist_tracks_bpr``, or any dense layer) gets
Keras' dense Adam formula, computed by TensorFlow's fused ``ApplyAdam`` kernel
(equal to Keras' update up to float rounding).
"""
from __future__ import annotations

import tensorflow as tf


class LazyAdam(tf.keras.optimizers.Adam):
    """Adam; a sparse (``tf.IndexedSlices``) gradient updates only its rows' moments and values.

    Same arguments as ``tf.keras.optimizers.Adam`` (``amsgrad`` is not supported).
    """

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, name="LazyAdam", **kwargs):
        if kwargs.get("amsgrad"):
            raise ValueError("LazyAdam does not support amsgrad")
        super().__init__(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, name=name,
                         **kwargs)

    def update_step(self, gradient, variable):
        dtype = variable.dtype
        lr = tf.cast(self.learning_rate, dtype)
        step = tf.cast(self.iterations + 1, dtype)
        beta_1 = tf.cast(self.beta_1, dtype)
        beta_2 = tf.cast(self.beta_2, dtype)
        key = self._index_dict[self._var_key(variable)]
        m, v = self._momentums[key], self._velocities[key]
        if not isinstance(gradient, tf.IndexedSlices):
            if self.adaptive_epsilon or not all(hasattr(x, "handle") for x in (variable, m, v)):
                return super().update_step(gradient, variable)
            # Keras' dense formula in TensorFlow's fused kernel: one pass over the variable and its two
            # slots instead of ~10 (the 199k x 128 track table: 0.09 instead of 0.21 CPU s per step).
            return tf.raw_ops.ResourceApplyAdam(
                var=variable.handle, m=m.handle, v=v.handle, beta1_power=tf.pow(beta_1, step),
                beta2_power=tf.pow(beta_2, step), lr=lr, beta1=beta_1, beta2=beta_2,
                epsilon=tf.cast(self.epsilon, dtype), grad=gradient)
        alpha = lr * tf.sqrt(1 - tf.pow(beta_2, step)) / (1 - tf.pow(beta_1, step))
        epsilon = self.epsilon * tf.sqrt(1 - tf.pow(beta_2, step)) if self.adaptive_epsilon else self.epsilon
        # apply_gradients summed duplicate indices (_deduplicate_sparse_grad): each row once here.
        rows, values = gradient.indices, gradient.values
        m_rows = beta_1 * tf.gather(m, rows) + (1 - beta_1) * values
        v_rows = beta_2 * tf.gather(v, rows) + (1 - beta_2) * tf.square(values)
        m.scatter_update(tf.IndexedSlices(m_rows, rows))
        v.scatter_update(tf.IndexedSlices(v_rows, rows))
        variable.scatter_sub(tf.IndexedSlices(alpha * m_rows / (tf.sqrt(v_rows) + epsilon), rows))


class DenseAllReduce:
    """Mixin: between workers, sum an embedding table's sparse gradient as a dense tensor.

    Under ``MultiWorkerMirroredStrategy`` Keras sums each gradient across replicas
    (``aggregate_gradients``, the hook tf-keras documents for this). A
    ``tf.IndexedSlices`` gradient (an embedding lookup's) is summed by an
    all-gather of its rows: each worker receives every other worker's batch rows
    (``nnz x (dim + 1)`` values per worker, growing with the batch), and the
    result keeps every duplicate. A dense gradient goes through the ring
    all-reduce instead, about ``2 x rows x dim`` values per worker whatever the
    batch. When a table has fewer rows than the rows a step touches across the
    workers (ML-100K / ML-1M users and items against batches of thousands) the
    dense sum moves less data; for tables far larger than a step (ML-25M's users
    against a small batch) the gather does. ``train.sparse_all_reduce: dense``
    chooses it (README, "Local multi-worker").

    Only for optimizers whose sparse and dense updates are the same maths (Keras'
    ``adam``, ``adagrad``, ``sgd``: a row without gradient gets the same update
    from a zero dense row as from no slice); ``lazy_adam`` is not one of them.
    One replica: gradients are left as they are.
    """

    def aggregate_gradients(self, grads_and_vars):
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            grads_and_vars = [(tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g, v)
                              for g, v in grads_and_vars]
        return super().aggregate_gradients(grads_and_vars)


class DenseAllReduceAdam(DenseAllReduce, tf.keras.optimizers.Adam):
    """``tf.keras.optimizers.Adam`` with ``DenseAllReduce``."""


class DenseAllReduceAdagrad(DenseAllReduce, tf.keras.optimizers.Adagrad):
    """``tf.keras.optimizers.Adagrad`` with ``DenseAllReduce``."""


class DenseAllReduceSGD(DenseAllReduce, tf.keras.optimizers.SGD):
    """``tf.keras.optimizers.SGD`` with ``DenseAllReduce``."""
