"""The factor of the dampened inverse Gram matrix against NumPy's inverse."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lightcomp.posttrain import _factor
from tests.posttrain.helpers import layer_data


def test_inverse_factor_is_the_upper_cholesky_factor_of_the_inverse():
    _, _, h = layer_data(9, cols=24)
    u = np.asarray(_factor.inverse_factor(jnp.asarray(h, jnp.float32)), np.float64)
    np.testing.assert_allclose(np.triu(u), u)
    np.testing.assert_allclose(u.T @ u, np.linalg.inv(h.astype(np.float64)), rtol=2e-3, atol=1e-6)


@pytest.mark.parametrize("n, leaf", [(8, 8), (37, 8), (64, 16)])
@pytest.mark.parametrize("jit", [False, True])
def test_lower_inverse_matches_numpy(n, leaf, jit):
    rng = np.random.default_rng(n)
    low = np.tril(rng.normal(size=(n, n))) + 4 * np.eye(n)
    f = jax.jit(_factor.lower_inverse, static_argnums=1) if jit else _factor.lower_inverse
    got = np.asarray(f(jnp.asarray(low, jnp.float32), leaf))
    np.testing.assert_array_equal(np.tril(got), got)
    np.testing.assert_allclose(got, np.linalg.inv(low), rtol=1e-5, atol=1e-6)


def test_inverse_factor_is_nan_when_h_is_not_positive_definite():
    h = jnp.diag(jnp.array([1.0, -1.0, 2.0]))
    assert not np.isfinite(np.asarray(_factor.inverse_factor(h))).all()
