"""lightcomp/tree/_axes.py: `Axes` (frozen, hashable, checked) and the message of `need_known`."""

import jax
import numpy as np
import pytest

from lightcomp import tree


def test_helpers_of_an_attention_kernel():
    q = tree.Axes(stacked=(0,), inputs=(1,), outputs=(2, 3))
    out = tree.Axes(stacked=(0,), inputs=(1, 2), outputs=(3,))
    assert (q.group_axis, q.output_axis, q.units, q.ndim) == (1, 3, (0, 2, 3), 4)
    assert (out.group_axis, out.output_axis, out.units) == (2, 3, (0, 3))
    assert tree.Axes(inputs=(0,), outputs=(1,)).units == (1,)
    assert tree.Axes().ndim == 0 and tree.Axes().group_axis is None


def test_frozen_hashable_names_not_compared():
    a = tree.Axes((0,), (1,), (2,), names=("layers", "in", "out"))
    b = tree.Axes(stacked=[0], inputs=1, outputs=(2,))
    assert a == b and hash(a) == hash(b) and {a: 1}[b] == 1
    assert a.stacked == (0,) and b.inputs == (1,)
    with pytest.raises(AttributeError):
        a.stacked = ()

    @jax.jit
    def f(x, ax=a):
        return x * len(ax.units)

    assert float(f(np.float32(1.0))) == 2.0


def test_unknown_axes():
    ax = tree.Axes(stacked=(0,), inputs=None, outputs=None)
    assert not ax.known and ax.ndim is None and ax.units == (0,)
    assert "inputs=None" in repr(ax)


def test_describe_names_role_name_and_size():
    ax = tree.Axes((), (0, 1), (2,), names=("heads", "head_dim", "embed"))
    assert ax.describe(1, (2, 6, 8)) == "input axis 1 (head_dim, size 6)"
    assert ax.describe(2, (2, 6, 8)) == "output axis 2 (embed, size 8)"
    assert tree.Axes((0,), (1,), (2,)).describe(0, (3, 4, 5)) == "stacked axis 0 (size 3)"


def test_check_against_a_shape_names_the_leaf():
    tree.Axes((0,), (1,), (2,)).check((3, 4, 5), "a/kernel")
    with pytest.raises(ValueError, match=r"'a/kernel' \(3, 4, 5\).*axes \[2\] are in none"):
        tree.Axes((0,), (1,), ()).check((3, 4, 5), "a/kernel")
    with pytest.raises(ValueError, match=r"'a/kernel' name axis 3.*rank 3"):
        tree.Axes((), (1,), (3,)).check((3, 4, 5), "a/kernel")
    tree.Axes((0,), None, None).check((3, 4, 5), "a/kernel")  # only the layer axes


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(stacked=(0,), inputs=(0,), outputs=(1,)), ValueError, "more than one"),
        (dict(inputs=(0, 0), outputs=(1,)), ValueError, "twice"),
        (dict(inputs=(-1,), outputs=(0,)), ValueError, "non-negative"),
        (dict(inputs=(True,), outputs=(0,)), TypeError, "tuple of ints"),
        (dict(inputs=(0.0,), outputs=(1,)), TypeError, "tuple of ints"),
        (dict(inputs="0", outputs=(1,)), TypeError, "tuple of ints"),
        (dict(inputs=None, outputs=(1,)), ValueError, "both"),
        (dict(stacked=None), TypeError, "stacked"),
    ],
)
def test_bad_axes(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        tree.Axes(**kwargs)


def test_need_known_says_what_to_pass():
    ax = tree.Axes((0,), None, None)
    tree.need_known(tree.Axes((), (0,), (1,)), "p", (2, 3), "anything")
    with pytest.raises(ValueError) as e:
        tree.need_known(ax, "blk/Einsum_0/kernel", (3, 4, 5, 6), "granularity=NM(n=2, m=4)")
    msg = str(e.value)
    assert "granularity=NM(n=2, m=4) needs the input and output axes" in msg
    assert "'blk/Einsum_0/kernel' (3, 4, 5, 6)" in msg
    assert (
        "overrides={'blk/Einsum_0/kernel': Axes(stacked=(0,), inputs=(1, 2), outputs=(3,))}" in msg
    )
