"""trainer.optimizers.LazyAdam against a NumPy reference of lazy Adam on a small table."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from trainer.optimizers import LazyAdam

LR, B1, B2, EPS = 0.01, 0.9, 0.999, 1e-7


def numpy_lazy_adam(table, steps, lr=LR):
    """Reference: per step, rows -> summed gradient; only those rows' m, v and values change."""
    w, m, v = table.copy(), np.zeros_like(table), np.zeros_like(table)
    for t, (rows, values) in enumerate(steps, start=1):
        g = np.zeros_like(table)
        np.add.at(g, rows, values)  # duplicates add up
        touched = np.unique(rows)
        m[touched] = B1 * m[touched] + (1 - B1) * g[touched]
        v[touched] = B2 * v[touched] + (1 - B2) * g[touched] ** 2
        alpha = lr * np.sqrt(1 - B2 ** t) / (1 - B1 ** t)
        w[touched] -= alpha * m[touched] / (np.sqrt(v[touched]) + EPS)
    return w, m, v


def random_steps(rng, rows_total, dim, count):
    steps = []
    for _ in range(count):
        rows = rng.integers(0, rows_total, size=7)
        rows[1] = rows[0]  # a duplicate in every step
        steps.append((rows, rng.normal(size=(7, dim)).astype(np.float32)))
    return steps


def test_sparse_updates_match_the_numpy_reference_and_leave_other_rows_alone():
    rng = np.random.default_rng(0)
    table = rng.normal(size=(12, 4)).astype(np.float32)
    steps = random_steps(rng, 12, 4, 6)
    steps.append((np.array([0, 0, 1]), rng.normal(size=(3, 4)).astype(np.float32)))
    variable = tf.Variable(table)
    optimizer = LazyAdam(LR)
    for rows, values in steps:
        grad = tf.IndexedSlices(tf.constant(values), tf.constant(rows, tf.int64), tf.constant(table.shape, tf.int64))
        optimizer.apply_gradients([(grad, variable)])
    expected_w, expected_m, expected_v = numpy_lazy_adam(table, steps)
    np.testing.assert_allclose(variable.numpy(), expected_w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(optimizer._momentums[0].numpy(), expected_m, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(optimizer._velocities[0].numpy(), expected_v, rtol=1e-5, atol=1e-6)
    never = sorted(set(range(12)) - {int(r) for rows, _ in steps for r in rows})
    assert never, "the test needs rows no step touches"
    np.testing.assert_array_equal(variable.numpy()[never], table[never])
    # Keras' Adam on the same sparse gradients moves rows that were in an earlier batch but not in
    # this one (momentum): why it is not the lazy update, and why it costs a pass over the table.
    keras_variable = tf.Variable(table)
    keras = tf.keras.optimizers.Adam(LR)
    for rows, values in steps:
        keras.apply_gradients([(tf.IndexedSlices(tf.constant(values), tf.constant(rows, tf.int64),
                                                 tf.constant(table.shape, tf.int64)), keras_variable)])
    assert not np.allclose(keras_variable.numpy(), expected_w, atol=1e-4)


def test_embedding_gradients_through_a_model_step_match_the_reference():
    """The IndexedSlices an embedding lookup produces (inside tf.function, duplicates included)."""
    rng = np.random.default_rng(1)
    table = rng.normal(size=(20, 3)).astype(np.float32)
    variable = tf.Variable(table)
    optimizer = LazyAdam(LR)
    batches = [rng.integers(0, 20, size=9) for _ in range(5)]
    targets = [rng.normal(size=(9, 3)).astype(np.float32) for _ in range(5)]

    @tf.function
    def step(ids, target):
        with tf.GradientTape() as tape:
            loss = 0.5 * tf.reduce_sum(tf.square(tf.gather(variable, ids) - target))
        grad = tape.gradient(loss, variable)
        assert isinstance(grad, tf.IndexedSlices)
        optimizer.apply_gradients([(grad, variable)])

    for ids, target in zip(batches, targets):
        step(tf.constant(ids, tf.int64), tf.constant(target))
    # The reference replays the steps (each gradient is taken at the current weights).
    w, m, v = table.copy(), np.zeros_like(table), np.zeros_like(table)
    for t, (ids, target) in enumerate(zip(batches, targets), start=1):
        per_row = w[ids] - target
        g = np.zeros_like(table)
        np.add.at(g, ids, per_row)
        touched = np.unique(ids)
        m[touched] = B1 * m[touched] + (1 - B1) * g[touched]
        v[touched] = B2 * v[touched] + (1 - B2) * g[touched] ** 2
        w[touched] -= LR * np.sqrt(1 - B2 ** t) / (1 - B1 ** t) * m[touched] / (np.sqrt(v[touched]) + EPS)
    np.testing.assert_allclose(variable.numpy(), w, rtol=1e-5, atol=1e-6)


def test_dense_gradients_are_keras_adam():
    rng = np.random.default_rng(2)
    start = rng.normal(size=(5, 3)).astype(np.float32)
    lazy, keras = tf.Variable(start), tf.Variable(start)
    lazy_opt, keras_opt = LazyAdam(LR), tf.keras.optimizers.Adam(LR)
    for _ in range(4):
        grad = tf.constant(rng.normal(size=(5, 3)).astype(np.float32))
        lazy_opt.apply_gradients([(grad, lazy)])
        keras_opt.apply_gradients([(grad, keras)])
    np.testing.assert_allclose(lazy.numpy(), keras.numpy(), rtol=1e-5, atol=1e-6)  # fused kernel: rounding only
    assert not np.allclose(lazy.numpy(), start, atol=1e-3)  # it moved


def test_lazy_adam_is_a_train_optimizer_and_amsgrad_is_refused():
    from trainer import config as config_lib
    from trainer.experiment import make_optimizer

    optimizer = make_optimizer(config_lib.TrainConfig(optimizer="lazy_adam", learning_rate=0.005), 10)
    assert isinstance(optimizer, LazyAdam) and float(optimizer.learning_rate) == pytest.approx(0.005)
    with pytest.raises(ValueError, match="amsgrad"):
        LazyAdam(amsgrad=True)


def test_a_run_killed_after_an_epoch_resumes_from_the_backup_to_the_same_weights(tmp_path):
    """BackupAndRestore (the experiment's relaunch path) saves and restores LazyAdam's moments and step."""
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 50, size=(64, 1))
    targets = rng.normal(size=(64, 4)).astype(np.float32)

    def fit(backup, epochs, callbacks=()):
        tf.keras.utils.set_random_seed(0)
        model = tf.keras.Sequential([tf.keras.layers.Embedding(50, 4), tf.keras.layers.Flatten()])
        model.compile(optimizer=LazyAdam(0.05), loss="mse")
        model.fit(ids, targets, batch_size=16, epochs=epochs, shuffle=False, verbose=0,
                  callbacks=[tf.keras.callbacks.BackupAndRestore(str(backup)), *callbacks])
        return model

    class Killed(Exception):
        pass

    class KillAfterEpoch2(tf.keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:  # the backup callback (listed first) has saved epoch 2
                raise Killed

    uninterrupted = fit(tmp_path / "a", 4).get_weights()
    with pytest.raises(Killed):
        fit(tmp_path / "b", 4, [KillAfterEpoch2()])
    ran: list[int] = []
    resumed = fit(tmp_path / "b", 4, [tf.keras.callbacks.LambdaCallback(on_epoch_begin=lambda e, logs: ran.append(e))])
    assert ran == [2, 3]  # epochs 3 and 4 only: it resumed after epoch 2
    assert int(resumed.optimizer.iterations.numpy()) == 16  # the restored step count went on (bias correction)
    np.testing.assert_allclose(resumed.get_weights()[0], uninterrupted[0], rtol=1e-6, atol=1e-7)
    # The weights of epoch 2 with a fresh optimizer (moments and step lost) end elsewhere: the equality
    # above needs the restored moments.
    tf.keras.utils.set_random_seed(0)
    restarted = tf.keras.Sequential([tf.keras.layers.Embedding(50, 4), tf.keras.layers.Flatten()])
    restarted.compile(optimizer=LazyAdam(0.05), loss="mse")
    restarted.build((None, 1))
    restarted.set_weights(fit(tmp_path / "c", 2).get_weights())
    restarted.fit(ids, targets, batch_size=16, epochs=2, shuffle=False, verbose=0)
    assert not np.allclose(restarted.get_weights()[0], uninterrupted[0], atol=1e-4)


DENSE_ALL_REDUCE_SCRIPT = r"""
import json, sys
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from trainer import optimizers

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"],
                                          cross_device_ops=tf.distribute.ReductionToOneDevice())
rng = np.random.default_rng(0)
table = rng.normal(size=(6, 3)).astype(np.float32)
ids = tf.constant([[0, 0, 4, 5], [4, 1, 1, 2]], tf.int32)  # per replica; duplicates within and across replicas
result = {}
for name, make in (("sparse", lambda: tf.keras.optimizers.Adam(0.05)),
                   ("dense", lambda: optimizers.DenseAllReduceAdam(0.05)),
                   ("sgd_sparse", lambda: tf.keras.optimizers.SGD(0.05, momentum=0.9)),
                   ("sgd_dense", lambda: optimizers.DenseAllReduceSGD(0.05, momentum=0.9))):
    with strategy.scope():
        variable = tf.Variable(table)
        optimizer = make()

    kinds = set()

    @tf.function
    def step():
        def replica_fn():
            index = tf.distribute.get_replica_context().replica_id_in_sync_group
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.gather(variable, ids[index]) ** 2)
            grads = tape.gradient(loss, [variable])
            aggregated = optimizer.aggregate_gradients(list(zip(grads, [variable])))  # what the update sees
            kinds.add(type(aggregated[0][0]).__name__)  # at trace time
            optimizer.apply_gradients(zip(grads, [variable]))
        return strategy.run(replica_fn)

    for _ in range(3):
        step()
    result[name] = variable.numpy().tolist()
    result[name + "_kinds"] = sorted(kinds)
print(json.dumps(result))
"""


def test_dense_all_reduce_sums_sparse_gradients_to_the_same_update(tmp_path):
    """Two replicas (logical CPUs, in a child: they must exist before TensorFlow starts): the gathered sparse and
    the dense sum give the same Adam and SGD-with-momentum updates, duplicates included."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "dense_all_reduce.py"
    script.write_text(DENSE_ALL_REDUCE_SCRIPT)
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(script)], cwd=repo, capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "PYTHONPATH": str(repo)})
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(result["dense"], result["sparse"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result["sgd_dense"], result["sgd_sparse"], rtol=1e-5, atol=1e-6)
    assert not np.allclose(result["dense"], result["sgd_dense"])  # the steps did move the table
    assert result["sparse_kinds"] == result["sgd_sparse_kinds"] == ["IndexedSlices"]
    assert result["dense_kinds"] == result["sgd_dense_kinds"] == ["EagerTensor"] or \
        result["dense_kinds"] == result["sgd_dense_kinds"] == ["SymbolicTensor"]


def test_dense_all_reduce_is_chosen_by_the_config_and_refused_with_lazy_adam():
    from trainer import config as config_lib
    from trainer import optimizers
    from trainer.experiment import make_optimizer

    assert isinstance(make_optimizer(config_lib.TrainConfig(sparse_all_reduce="dense"), 10),
                      optimizers.DenseAllReduceAdam)
    assert isinstance(make_optimizer(config_lib.TrainConfig(optimizer="adagrad", sparse_all_reduce="dense"), 10),
                      optimizers.DenseAllReduceAdagrad)
    assert type(make_optimizer(config_lib.TrainConfig(), 10)) is tf.keras.optimizers.Adam
    with pytest.raises(ValueError, match="lazy_adam"):
        config_lib.TrainConfig(optimizer="lazy_adam", sparse_all_reduce="dense")
    with pytest.raises(ValueError, match="sparse_all_reduce"):
        config_lib.TrainConfig(sparse_all_reduce="ring")
