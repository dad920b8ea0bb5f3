"""Tests of lightcomp.checkpoint._codec: leaf descriptions, PRNG keys as data, the match check."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lightcomp.checkpoint._codec import (
    FORMAT,
    FORMAT_VERSION,
    abstract,
    decode,
    describe,
    encode,
    is_key,
    mismatch,
)


def _state():
    return {
        "w": jnp.arange(6, dtype=jnp.bfloat16).reshape(2, 3),
        "masks": [jnp.ones(3, bool), None],
        "rng": jax.random.key(3),
        "rbg": jax.random.key(4, impl="rbg"),
        "legacy": jax.random.PRNGKey(5),
        "count": 7,
    }


def test_describe_names_every_leaf_and_the_key_leaves():
    meta = describe(_state())
    assert meta["format"] == FORMAT and meta["version"] == FORMAT_VERSION == 2
    assert meta["leaves"] == [
        {"path": "count", "shape": [], "dtype": str(np.asarray(7).dtype)},  # as NumPy holds it
        {"path": "legacy", "shape": [2], "dtype": "uint32"},
        {"path": "masks/0", "shape": [3], "dtype": "bool"},
        {"path": "rbg", "shape": [4], "dtype": "uint32"},
        {"path": "rng", "shape": [2], "dtype": "uint32"},
        {"path": "w", "shape": [2, 3], "dtype": "bfloat16"},
    ]
    assert meta["keys"] == {"rbg": "rbg", "rng": "threefry2x32"}  # raw uint32 keys are arrays


def test_describe_rejects_non_arrays():
    with pytest.raises(TypeError, match="'a/b'"):
        describe({"a": {"b": "text"}})


def test_encode_decode_round_trips_typed_keys():
    state = _state()
    enc = encode(state)
    assert not any(is_key(x) for x in jax.tree.leaves(enc))
    np.testing.assert_array_equal(enc["rng"], jax.random.key_data(state["rng"]))
    assert isinstance(enc["count"], np.ndarray) and enc["count"].shape == ()
    back = decode(enc, state)
    for name in ("rng", "rbg"):
        assert is_key(back[name]) and jax.random.key_impl(back[name]) == jax.random.key_impl(
            state[name]
        )
        np.testing.assert_array_equal(
            jax.random.key_data(back[name]), jax.random.key_data(state[name])
        )
    assert back["masks"][1] is None and back["legacy"] is enc["legacy"]


def test_abstract_keeps_shapes_dtypes_and_shardings():
    enc = encode(_state())
    spec = abstract(enc)
    for s, x in zip(jax.tree.leaves(spec), jax.tree.leaves(enc), strict=True):
        assert isinstance(s, jax.ShapeDtypeStruct)
        assert s.shape == x.shape and s.dtype == x.dtype
        if isinstance(x, jax.Array):
            assert s.sharding == x.sharding
    assert spec["count"].sharding == jax.sharding.SingleDeviceSharding(jax.devices()[0])


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda s: {**s, "extra": jnp.zeros(2)}, ": target leaf 'extra' is not in the checkpoint"),
        (lambda s: {k: v for k, v in s.items() if k != "w"}, ": checkpoint leaf 'w' is not in"),
        (lambda s: {**s, "w": jnp.zeros((2, 3))}, " at leaf 'w': checkpoint has bfloat16[2, 3], "),
        (lambda s: {**s, "w": jnp.zeros((3, 2), jnp.bfloat16)}, "target has bfloat16[3, 2]"),
        (lambda s: {**s, "rng": jax.random.key_data(s["rng"])}, ": PRNG key leaves differ"),
    ],
)
def test_mismatch_says_which_leaf_differs(change, message):
    state = _state()
    meta = describe(state)
    assert mismatch(meta, state) is None
    assert message in mismatch(meta, change(state))
