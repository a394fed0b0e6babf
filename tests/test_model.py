"""The CNN: pinned shapes and parameter count, and the penalty it adds to the loss."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from l2lab.model import build_model, build_optimizer, kernel_regularizer
from l2lab.norms import kernels
from l2lab.params import TrainParams

TRAIN = dict(seed=0, l2=0.001, l1=0.0, weight_decay=0.0, learning_rate=0.001, batch_size=64, epochs=1,
             precision="float32")


def network(l1: float, l2: float, seed: int) -> keras.Model:
    return build_model(TrainParams(**{**TRAIN, "l1": l1, "l2": l2, "seed": seed}))


def test_architecture_and_parameter_count() -> None:
    model = network(0.0, 0.001, 0)
    assert model.count_params() == 315_722  # the seed article's architecture
    assert model.input.dtype == "uint8" and tuple(model.input.shape) == (None, 32, 32, 3)
    shapes = {layer.name: tuple(layer.output.shape) for layer in model.layers}
    assert shapes["conv1"] == (None, 30, 30, 32) and shapes["pool1"] == (None, 15, 15, 32)
    assert shapes["conv2"] == (None, 13, 13, 64) and shapes["pool2"] == (None, 6, 6, 64)
    assert shapes["flatten"] == (None, 2304) and shapes["dense1"] == (None, 128)
    assert shapes["dense2"] == (None, 10)


def test_raw_uint8_images_give_probabilities() -> None:
    model = network(0.0, 0.0, 0)
    x = np.random.default_rng(0).integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    probs = np.asarray(model(x))
    assert probs.shape == (4, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize(("l1", "l2"), [(0.0, 0.001), (0.0005, 0.0), (0.0002, 0.003)])
def test_penalty_is_lambda_times_kernel_sums_biases_excluded(l1: float, l2: float) -> None:
    model = network(l1, l2, 1)
    for layer in model.layers:  # give the biases weight: they must still not count
        if hasattr(layer, "bias") and layer.bias is not None:
            layer.bias.assign(np.full(layer.bias.shape, 3.0, dtype=np.float32))
    ks = kernels(model)
    assert sorted(ks) == ["conv1", "conv2", "dense1", "dense2"]
    expected = l2 * sum(np.sum(k**2) for k in ks.values()) + l1 * sum(np.sum(np.abs(k)) for k in ks.values())
    keras_penalty = float(sum(float(loss) for loss in model.losses))
    assert keras_penalty == pytest.approx(expected, rel=1e-5)


def test_no_regularizer_when_both_lambdas_are_zero() -> None:
    assert kernel_regularizer(0.0, 0.0) is None
    assert network(0.0, 0.0, 0).losses == []


def test_same_seed_same_initial_weights() -> None:
    a, b = network(0.0, 0.001, 5), network(0.0, 0.001, 5)
    c = network(0.0, 0.001, 6)
    assert all(np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights()))
    assert not np.array_equal(a.get_weights()[0], c.get_weights()[0])


def test_weight_decay_uses_adamw_and_spares_biases() -> None:
    assert type(build_optimizer(TrainParams(**TRAIN))) is keras.optimizers.Adam
    decayed = build_optimizer(TrainParams(**{**TRAIN, "weight_decay": 0.01}))
    assert isinstance(decayed, keras.optimizers.AdamW) and decayed.weight_decay == pytest.approx(0.01)
    model = network(0.0, 0.0, 0)
    decayed.build(model.trainable_variables)
    spared = {v.path for v in model.trainable_variables if not decayed._use_weight_decay(v)}
    assert spared and all(path.endswith("bias") for path in spared)


def test_sgd_with_nesterov_momentum_and_decoupled_decay_is_sgdw() -> None:
    plain = build_optimizer(TrainParams(**{**TRAIN, "optimizer": "sgd"}))
    assert type(plain) is keras.optimizers.SGD and plain.momentum == pytest.approx(0.9) and plain.nesterov
    assert plain.weight_decay is None
    sgdw = build_optimizer(TrainParams(**{**TRAIN, "optimizer": "sgd", "momentum": 0.5, "nesterov": False,
                                          "weight_decay": 5e-4}))
    assert sgdw.momentum == pytest.approx(0.5) and not sgdw.nesterov and sgdw.weight_decay == pytest.approx(5e-4)
    model = network(0.0, 0.0, 0)
    sgdw.build(model.trainable_variables)
    assert all(v.path.endswith("bias") for v in model.trainable_variables if not sgdw._use_weight_decay(v))


def test_cosine_schedule_decays_to_zero_over_the_run_after_its_warmup() -> None:
    from l2lab.model import learning_rate

    assert learning_rate(TrainParams(**TRAIN), 100) == 0.001  # constant: the number itself, as before
    cosine = learning_rate(TrainParams(**{**TRAIN, "epochs": 4, "schedule": "cosine"}), 100)
    assert [float(cosine(step)) for step in (0, 200, 400)] == pytest.approx([0.001, 0.0005, 0.0], abs=1e-9)
    warm = learning_rate(TrainParams(**{**TRAIN, "epochs": 4, "schedule": "cosine", "warmup_epochs": 1}), 100)
    assert [float(warm(step)) for step in (0, 50, 100, 250, 400)] == pytest.approx([0.0, 0.0005, 0.001, 0.0005, 0.0],
                                                                                 abs=1e-9)


@pytest.mark.parametrize("n", [2100, 1024, 7])  # full batches and a last short one; one batch; one short batch
def test_scores_forward_gives_model_predicts_numbers_bit_for_bit(n: int) -> None:
    from l2lab.model import compile_model
    from l2lab.scores import PREDICT_BATCH, forward

    train = TrainParams(**TRAIN)
    model = compile_model(train, model=build_model(train))
    rng = np.random.default_rng(n)
    for layer in model.layers:  # weights away from their initial values, as after training
        layer.set_weights([w + rng.normal(0, 0.05, w.shape).astype(w.dtype) for w in layer.get_weights()])
    x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    run = forward(model)
    expected = model.predict(x, batch_size=PREDICT_BATCH, verbose=0)
    for _ in range(2):  # and the same again: one trace serves every call
        got = run(x)
        assert got.dtype == expected.dtype and np.array_equal(got, expected)
    assert np.array_equal(run(x[:5]), model.predict(x[:5], batch_size=PREDICT_BATCH, verbose=0))
