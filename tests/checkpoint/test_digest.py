"""Tests of lightcomp.checkpoint._digest: leaf digests, the seal, compression fingerprints."""

from __future__ import annotations

import hashlib

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import lightcomp as lc
from lightcomp.checkpoint._digest import (
    digests,
    fingerprint_mismatch,
    fingerprints,
    first_damaged,
    leaf_digest,
    seal,
)


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16, np.float16, np.int8, np.bool_])
def test_leaf_digest_is_blake2b_of_dtype_shape_and_bytes(dtype):
    x = (np.random.default_rng(0).normal(size=(3, 5)) * 4).astype(dtype)
    a = np.asarray(x)
    want = hashlib.blake2b(f"{a.dtype.name}[3, 5]".encode() + a.tobytes(), digest_size=16)
    assert leaf_digest(x) == leaf_digest(jnp.asarray(x)) == want.hexdigest()
    assert leaf_digest(np.asfortranarray(a)) == want.hexdigest()  # C order, whatever the layout
    flipped = a.copy().reshape(-1).view(np.uint8)
    flipped[7] ^= 1
    assert leaf_digest(flipped.view(a.dtype).reshape(3, 5)) != want.hexdigest()
    assert leaf_digest(a.reshape(5, 3)) != want.hexdigest()  # the shape counts
    assert leaf_digest(np.float32(2.0)) != leaf_digest(np.int32(0x40000000))  # and the dtype


def test_first_damaged_names_the_first_leaf_that_differs():
    state = {"a": np.arange(4.0), "b": {"c": np.ones(3, np.int32)}}
    saved = digests(state)
    assert first_damaged(state, saved) is None
    assert first_damaged({**state, "b": {"c": np.zeros(3, np.int32)}}, saved) == "b/c"
    assert first_damaged(state, {**saved, "a": None}) is None  # no digest: not verified


def test_seal_ignores_key_order_and_its_own_field():
    doc = {"b": [1, 2], "a": {"x": "y"}}
    assert seal(doc) == seal({"a": {"x": "y"}, "b": [1, 2]}) == seal({**doc, "seal": "zz"})
    assert seal(doc) != seal({**doc, "b": [2, 1]})


def test_fingerprints_are_collected_from_every_compression_state():
    _, params = lc.models.init_mlp([8, 4], 6, jax.random.key(0))
    t = lc.chain(lc.pruning(0.5), lc.fake_quantization(4, axis=None))
    comp = t.init(params, jax.random.key(1))
    found = fingerprints({"params": params, "comp": comp, "nested": {"again": comp[1]}})
    assert found == {
        "comp/0": comp[0].fingerprint,
        "comp/1": comp[1].fingerprint,
        "nested/again": comp[1].fingerprint,
    }
    assert found["comp/1"].startswith("fake_quantization(bits=4, ")
    assert "leaf_axes=" in found["comp/1"]  # the axes it resolved at each leaf, as a digest
    assert fingerprints(params) == {}


def test_fingerprint_mismatch_describes_both():
    assert fingerprint_mismatch({"a": "x(1)"}, {"a": "x(1)"}) is None
    assert fingerprint_mismatch({"a": "x(1)"}, {"a": "x(2)"}) == (
        ": at 'a' the checkpoint has x(1), the target has x(2)"
    )
    assert "the target has no compression state" in fingerprint_mismatch({"a": "x(1)"}, {})
    assert fingerprint_mismatch({"a": "x(1)"}, {}, common_only=True) is None
