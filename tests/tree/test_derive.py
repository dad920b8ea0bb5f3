"""lightcomp/tree/_derive.py: `axes` of Flax's layers, scanned stacks, names, overrides."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from lightcomp import tree
from tests.tree.helpers import EMBED, LAYERS, PartitionedStack, draw, linen_params

A = tree.Axes
DENSE, CONV2D, EMBED_AX = A((), (0,), (1,)), A((), (0, 1, 2), (3,)), A((), (1,), (0,))
QKV, OUT = A((), (0,), (1, 2)), A((), (0, 1), (2,))
S_DENSE, S_QKV, S_OUT = A((0,), (1,), (2,)), A((0,), (1,), (2, 3)), A((0,), (1, 2), (3,))


def _by_path(params, **kw):
    ax = tree.axes(params, **kw)
    paths = tree.selected_paths(params, kw.get("select"))
    return dict(zip(paths, jax.tree.leaves(ax), strict=True))


def _block(prefix, qkv, out, dense):
    att = f"{prefix}MultiHeadDotProductAttention_0"
    return {
        **{f"{att}/{m}/kernel": qkv for m in ("key", "query", "value")},
        f"{att}/out/kernel": out,
        f"{prefix}Dense_0/kernel": dense,
        f"{prefix}Dense_1/kernel": dense,
    }


EXPECTED = {
    "linen_mlp": {"Dense_0/kernel": DENSE, "Dense_1/kernel": DENSE},
    "linen_resnet": {
        "Dense_0/kernel": DENSE,
        "ResBlock_0/Conv_0/kernel": CONV2D,
        "ResBlock_0/Conv_1/kernel": CONV2D,
        "conv_init/kernel": CONV2D,
    },
    "linen_transformer": {
        "Embed_0/embedding": EMBED_AX,
        "logits/kernel": DENSE,
        **_block("EncoderBlock_0/", QKV, OUT, DENSE),
    },
    "linen_vit": {
        "embedding/kernel": CONV2D,  # Flax's ViT names its patch Conv "embedding"
        "head/kernel": DENSE,
        **_block("EncoderBlock_0/", QKV, OUT, DENSE),
    },
    "linen_scan": {
        "Embed_0/embedding": EMBED_AX,
        "head/kernel": DENSE,
        **_block("layers/", S_QKV, S_OUT, S_DENSE),
    },
    "nnx_cnn": {"conv1/kernel": CONV2D, "linear/kernel": DENSE},
    **{
        f"nnx_{how}": {
            "embed/embedding": EMBED_AX,
            "blocks/mlp/kernel": S_DENSE,
            **{f"blocks/attn/{m}/kernel": S_QKV for m in ("key", "query", "value")},
            "blocks/attn/out/kernel": S_OUT,
        }
        for how in ("vmap", "scan")
    },
}


def test_derived_axes_of_every_family(families):
    assert set(families) == set(EXPECTED)
    for name, (params, _) in families.items():
        assert _by_path(params) == EXPECTED[name], name


def test_axis_names_for_messages(families):
    got = _by_path(families["linen_scan"][0])
    assert got["layers/MultiHeadDotProductAttention_0/out/kernel"].names == (
        "layers",
        "heads",
        "head_dim",
        "embed",
    )
    assert got["Embed_0/embedding"].names == ("vocab", "features")


def test_a_scores_tree_shows_the_same_axes(families):
    # kernels alone (None at biases and norms) still show their layers: score trees work
    for name in ("linen_scan", "nnx_vmap", "linen_transformer"):
        params = families[name][0]
        scores = tree.map_selected(lambda w: w, params, unselected="none")
        assert _by_path(scores, select=lambda p, x: True) == EXPECTED[name], name


def test_a_bias_free_conv_in_a_scanned_block_takes_the_blocks_layers():
    params = {
        "stack": {
            "Conv_0": {"kernel": jnp.zeros((LAYERS, 3, 3, 4, 4))},  # a 2-D conv, or a 3-D one?
            "BatchNorm_0": {"scale": jnp.zeros((LAYERS, 4)), "bias": jnp.zeros((LAYERS, 4))},
        },
        "head": {"kernel": jnp.zeros((4, 5))},
    }
    got = _by_path(params)
    assert got["stack/Conv_0/kernel"] == A((0,), (1, 2, 3), (4,))
    assert got["head/kernel"] == DENSE


def test_partitioning_names_show_the_layer_axis():
    got = _by_path(linen_params(PartitionedStack(), jnp.zeros((1, EMBED))))
    assert got == {"blocks/Dense_0/kernel": S_DENSE, "blocks/Dense_1/kernel": S_DENSE}
    assert got["blocks/Dense_0/kernel"].names == ("layers", "embed", "mlp")
    # a kernel no name or sibling explains: the names alone decide
    box = lambda names: nn.Partitioned(jnp.zeros((3, 4, 5)), names=names)
    assert _by_path({"proj": {"kernel": box(("layers", "embed", "mlp"))}})["proj/kernel"] == S_DENSE
    assert not _by_path({"proj": {"kernel": box(("embed", "x", "mlp"))}})["proj/kernel"].known
    named = _by_path({"proj": {"kernel": box(("stage", "embed", "mlp"))}}, stacked="stage")
    assert named["proj/kernel"] == S_DENSE


def test_nnx_sharding_metadata_shows_the_layer_axis():
    class Block(nnx.Module):
        def __init__(self, rngs):
            init = nnx.with_metadata(
                nnx.initializers.lecun_normal(), out_sharding=("embed", "mlp"), eager_sharding=False
            )
            self.proj = nnx.Linear(4, 5, kernel_init=init, use_bias=False, rngs=rngs)

    @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make(key):
        return Block(nnx.Rngs(key))

    state = nnx.split(nnx.eval_shape(lambda: make(jax.random.split(jax.random.key(0), 3))))[1]
    assert _by_path(state) == {"proj/kernel": S_DENSE}


def test_layouts_that_cannot_be_derived():
    params = {
        "Einsum_0": {"kernel": jnp.zeros((3, 4, 5)), "bias": jnp.zeros((4, 5))},
        "proj": {"kernel": jnp.zeros((4, 2, 3))},  # a DenseGeneral? a stacked Dense?
        "Conv_1d": {"kernel": jnp.zeros((3, 4, 5)), "bias": jnp.zeros(5)},
    }
    got = _by_path(params)
    assert not got["Einsum_0/kernel"].known and not got["proj/kernel"].known
    assert got["Conv_1d/kernel"] == A((), (0, 1), (2,))


def test_plain_trees_keep_the_old_conventions():
    got = _by_path({"w": jnp.zeros((3, 4, 5)), "m": jnp.zeros((4, 5)), "b": jnp.zeros(5)})
    assert got == {"w": A((), (0, 1), (2,)), "m": A((), (0,), (1,))}
    picked = _by_path({"b": jnp.zeros(5), "s": jnp.zeros(())}, select=lambda p, x: True)
    assert picked == {"b": A((), (), (0,)), "s": A()}


def test_stacked_and_overrides_say_what_cannot_be_derived():
    params = {"blocks": {"w": jnp.zeros((3, 4, 5))}, "other": {"w": jnp.zeros((4, 5))}}
    assert _by_path(params, stacked={"blocks": 1})["blocks/w"] == A((0,), (1,), (2,))
    assert _by_path(params, stacked={"blocks": 1})["other/w"] == A((), (0,), (1,))
    assert _by_path({"w": jnp.zeros((2, 3, 4, 5))}, stacked=2)["w"] == A((0, 1), (2,), (3,))
    einsum = {"Einsum_0": {"kernel": jnp.zeros((3, 4, 5))}}
    given = A((), (0,), (1, 2))
    assert _by_path(einsum, overrides={r"Einsum_\d/kernel": given})["Einsum_0/kernel"] == given
    # stacked=0 undoes what the tree shows
    stacked = {"Dense_0": {"kernel": jnp.zeros((3, 4, 5)), "bias": jnp.zeros((3, 5))}}
    assert not _by_path(stacked, stacked=0)["Dense_0/kernel"].known


def test_derivation_works_on_traced_trees(families):
    params = draw(families["linen_scan"][0])

    @jax.jit
    def units(p):
        ax = tree.axes(p)
        return tree.map_selected(lambda w, a: jnp.float32(len(a.units)), p, ax)

    got = units(params)
    assert float(got["layers"]["MultiHeadDotProductAttention_0"]["query"]["kernel"]) == 3.0


# --- bad input -------------------------------------------------------------------------


def test_a_layer_count_that_disagrees_with_a_sibling():
    kernel_bias = {"Dense_0": {"kernel": jnp.zeros((3, 4, 5)), "bias": jnp.zeros((4, 5))}}
    with pytest.raises(
        ValueError,
        match=r"'Dense_0/bias' \(4, 5\) does not have the \(3,\) layers.*'Dense_0/kernel'",
    ):
        tree.axes(kernel_bias, lambda p, x: True)
    norm = {"LayerNorm_0": {"scale": jnp.zeros((3, 4)), "bias": jnp.zeros((2, 4))}}
    with pytest.raises(
        ValueError,
        match=r"'LayerNorm_0/scale' .*\(3,\) layers.*sibling 'LayerNorm_0/bias' has \(2,\)",
    ):
        tree.axes(norm, lambda p, x: True)
    with pytest.raises(ValueError, match=r"stacked=3 is more than the rank of leaf 'w'"):
        tree.axes({"w": jnp.zeros((2, 2))}, stacked=3)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(overrides={"nothing": A()}), ValueError, "'nothing' matches no selected leaf"),
        (
            dict(overrides={"w": (0, 1)}),
            TypeError,
            r"overrides\['w'\] must be a lightcomp.tree.Axes",
        ),
        (dict(overrides={1: A()}), TypeError, "path regexes"),
        (dict(overrides=[("w", A())]), TypeError, "overrides must be a dict"),
        (dict(overrides={"(": A()}), ValueError, "does not compile"),
        (
            dict(overrides={"w": A((), (0,), ())}),
            ValueError,
            r"'w' \(2, 3\).*axes \[1\] are in none",
        ),
        (dict(stacked=True), TypeError, "stacked must be"),
        (dict(stacked=-1), ValueError, "stacked must be >= 0"),
        (dict(stacked=1.0), TypeError, "stacked must be"),
        (dict(stacked={"w": "1"}), TypeError, r"stacked\['w'\] must be an int"),
        (dict(stacked={"[": 1}), ValueError, "does not compile"),
    ],
)
def test_bad_options(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        tree.axes({"w": jnp.zeros((2, 3))}, **kwargs)


def test_options_are_hashable_and_normalised():
    a = tree.AxesOptions({"w": A((), (0,), (1,))}, {"b": 1})
    b = tree.AxesOptions((("w", A((), (0,), (1,))),), (("b", 1),))
    assert a == b and hash(a) == hash(b)
    assert a.stacked_of("blocks/w") == 1 and a.stacked_of("w") is None
