"""Tests of lightcomp.export._pack: `pack` and `unpack`, their arguments and leaf paths."""

from __future__ import annotations

import tracemalloc

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lightcomp as lc
from lightcomp import export


def _bits(x):
    x = np.asarray(x)
    return x.view(f"u{x.dtype.itemsize}")


def _assert_bit_equal(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(_bits(a), _bits(b))


@pytest.fixture(scope="module")
def mlp():
    return lc.models.init_mlp((16, 10), 8, jax.random.key(0))


@pytest.fixture(scope="module")
def composed(mlp):
    _, params = mlp
    t = lc.chain(lc.transform.pruning(0.7), lc.transform.fake_quantization(3, axis=None))
    return params, t, t.init(params, jax.random.key(1))


def test_pack_with_transform_equals_jitted_effective_params(composed):
    params, t, comp_state = composed
    packed = export.pack(params, comp_state, t)
    back = export.unpack(packed)
    eff = jax.jit(t.apply)(params, comp_state)
    chex.assert_trees_all_equal_structs(back, eff)
    chex.assert_trees_all_equal_dtypes(back, eff)
    jax.tree.map(_assert_bit_equal, back, eff)
    kernel = next(r for r in export.report(packed)["leaves"] if r["path"] == "Dense_0/kernel")
    assert kernel["bits_per_weight"] < 4
    assert export.pack(eff) == packed  # the same bytes as packing the effective parameters


def test_cstate_is_an_alias_of_comp_state(composed):
    params, t, comp_state = composed
    by_position = export.pack(params, comp_state, t)
    assert export.pack(params, comp_state=comp_state, transform=t) == by_position
    assert export.pack(params, cstate=comp_state, transform=t) == by_position
    with pytest.raises(TypeError, match="not both"):
        export.pack(params, comp_state, t, cstate=comp_state)


def test_pack_validates_arguments(mlp, composed):
    _, params = mlp
    with pytest.raises(ValueError, match="comp_state and transform"):
        export.pack(params, cstate=())
    with pytest.raises(ValueError, match="comp_state and transform"):
        export.pack(params, transform=composed[1])
    with pytest.raises(TypeError, match="'Dense_0/kernel'"):
        export.pack({"Dense_0": {"kernel": "not an array"}})
    with pytest.raises(TypeError, match="entropy must be True or False"):
        export.pack(params, entropy="yes")
    with pytest.raises(TypeError, match=r"transform\.apply must be callable"):
        export.pack(params, (), object())


def test_manifest_uses_path_str_and_like_restores_nnx_state():
    _, state = nnx.split(nnx.Linear(3, 2, rngs=nnx.Rngs(0)))
    packed = export.pack(state)
    paths = [m["path"] for m in packed.manifest["leaves"]]
    assert paths == lc.tree.paths(state) == ["bias", "kernel"]  # no ".value"
    back = export.unpack(packed, like=state)
    assert type(back) is type(state)
    jax.tree.map(_assert_bit_equal, back, state)
    # a 0.1.0 manifest named the leaves "bias/value": it still unpacks into the state
    legacy = [{**m, "path": m["path"] + "/value"} for m in packed.manifest["leaves"]]
    old = export.Packed({**packed.manifest, "leaves": legacy}, packed.payload)
    jax.tree.map(_assert_bit_equal, export.unpack(old, like=state), state)
    with pytest.raises(ValueError, match="at leaf 0: 'bias' vs 'weights'"):
        renamed = [{**m, "path": "weights"} for m in packed.manifest["leaves"]]
        export.unpack(
            export.Packed({**packed.manifest, "leaves": renamed}, packed.payload), like=state
        )


@pytest.fixture(scope="module")
def packed():
    rng = np.random.default_rng(0)
    return export.pack(
        {"layer": {"kernel": rng.normal(size=(4, 8)).astype(np.float32)}, "step": np.int32(7)}
    )


def test_unpack_rejects_inconsistent_manifest(packed):
    leaves = [dict(m) for m in packed.manifest["leaves"]]
    leaves[0]["parts"] = [[0, len(packed.payload) + 10]]
    bad = export.Packed({**packed.manifest, "leaves": leaves}, packed.payload)
    with pytest.raises(
        ValueError, match="leaf 'layer/kernel': corrupted manifest: part outside the payload"
    ):
        export.unpack(bad)
    leaves[0] = {**packed.manifest["leaves"][0], "shape": [999]}
    bad = export.Packed({**packed.manifest, "leaves": leaves}, packed.payload)
    with pytest.raises(ValueError, match="leaf 'layer/kernel'"):
        export.unpack(bad)
    for manifest in ({"leaves": packed.manifest["leaves"]}, {"structure": None}, {"leaves": [{}]}):
        with pytest.raises(ValueError, match="corrupted manifest"):
            export.unpack(export.Packed(manifest, packed.payload))


def test_unpack_wants_a_packed():
    with pytest.raises(TypeError, match=r"packed must be a lightcomp\.export\.Packed"):
        export.unpack({"structure": None, "leaves": []})


def test_packed_sizes(packed):
    assert packed.nbytes == len(packed.payload)
    assert packed.header_bytes > 64


def test_planned_packing_is_within_2_percent_of_trying_every_coder(monkeypatch):
    # the benchmark chain on a leaf past EXHAUSTIVE_MAX: 90% pruned, 16 shared values,
    # 4 bits per output channel; against the same leaf with every coder tried
    import sys

    rng = np.random.default_rng(0)
    w = rng.standard_normal((256, 128)).astype(np.float32)
    w = np.where(np.abs(w) > np.quantile(np.abs(w), 0.9), w, 0)
    centroids = np.quantile(w[w != 0], np.linspace(0, 1, 16))
    w = np.where(w != 0, centroids[np.abs(w[..., None] - centroids).argmin(-1)], 0)
    w = np.asarray(lc.quant.fake_quant(jnp.asarray(w, jnp.float32), 4, axis=-1))
    params = {"kernel": w, "bias": rng.standard_normal(128).astype(np.float32)}
    planned = lc.export.pack(params)
    for name in ("_streams", "_positions", "_values", "_leaf"):
        monkeypatch.setattr(sys.modules[f"lightcomp.export.{name}"], "EXHAUSTIVE_MAX", 1 << 40)
    exhaustive = lc.export.pack(params)
    assert planned.nbytes <= 1.02 * exhaustive.nbytes
    chex.assert_trees_all_equal(lc.export.unpack(planned), params)


@pytest.mark.parametrize("kind", ["4-bit per channel", "float"])
def test_pack_peak_memory_stays_bounded(kind):
    # the memory bound of issue 15: a few times the leaf's bytes at most (the target is
    # ~1.5x plus a fixed work space of a few MiB), never a multiple of float64 copies
    w = np.random.default_rng(0).standard_normal((512, 512)).astype(np.float32) * 0.05
    x = np.asarray(lc.quant.fake_quant(jnp.asarray(w), 4, axis=-1)) if kind != "float" else w
    tracemalloc.start()
    try:
        packed = lc.export.pack({"Dense_0": {"kernel": x}})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * x.nbytes + 8 * 2**20
    np.testing.assert_array_equal(lc.export.unpack(packed)["Dense_0"]["kernel"], x)
