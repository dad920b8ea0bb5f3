"""Fixtures shared by the train tests: the digits, a trained teacher, a student, steps."""

import jax
import optax
import pytest

import lightcomp as lc
from lightcomp import train
from tests.train.helpers import BATCH, CLASSES, HIDDEN, compress, mlp


@pytest.fixture(scope="session")
def digits():
    return lc.data.load_digits(seed=0)


@pytest.fixture(scope="session")
def teacher(digits):
    """A 64-128-10 MLP trained with cross-entropy on the digits (shared by the module)."""
    apply, params = mlp((128, CLASSES), 0)
    opt = optax.adam(3e-3)

    @jax.jit
    def step(p, o, x, y):
        def f(p):
            return optax.softmax_cross_entropy_with_integer_labels(apply(p, x), y).mean()

        u, o = opt.update(jax.grad(f)(p), o, p)
        return optax.apply_updates(p, u), o

    o = opt.init(params)
    it = lc.data.batches(digits.x_train, digits.y_train, 128, seed=1)
    for _ in range(300):
        b = next(it)
        params, o = step(params, o, b["inputs"], b["labels"])
    acc = train.evaluate(apply, params, (digits.x_test, digits.y_test))["accuracy"]
    return apply, params, acc


@pytest.fixture(scope="session")
def student():
    return mlp((HIDDEN, CLASSES), 1)


@pytest.fixture(scope="session")
def batch(digits):
    return next(lc.data.batches(digits.x_train, digits.y_train, BATCH, seed=3))


@pytest.fixture(scope="session")
def adam_run(teacher, student, batch):
    """A pruned + 8-bit student under AdamW: (transform, optimizer, step, initial state)."""
    t_apply, _, _ = teacher
    s_apply, s_params = student
    tr = compress()
    opt = optax.adamw(1e-2, weight_decay=1e-2)
    step = jax.jit(train.make_step(s_apply, t_apply, opt, tr))
    state = train.init_state(s_params, opt, tr, jax.random.key(2))
    return tr, opt, step, state


@pytest.fixture(scope="session")
def plain_step(teacher, student):
    """The shared jitted plain KD step: identity(), sgd(0.1), the default loss."""
    t_apply, _, _ = teacher
    s_apply, s_params = student
    opt = optax.sgd(0.1)
    step = jax.jit(train.make_step(s_apply, t_apply, opt, lc.identity()))
    return step, train.init_state(s_params, opt, lc.identity(), jax.random.key(0))
