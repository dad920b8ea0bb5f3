"""Flax layers run with their contraction replaced by the integer forward (linen and nnx).

A Flax ``Dense`` / ``DenseGeneral`` / ``Conv`` (``nnx.Linear`` / ``LinearGeneral`` /
``Conv`` / ``Einsum``) computes its output with an injectable op (``dot_general``,
``conv_general_dilated``, ``einsum_op``). `LayerOp` is such an op: it quantizes the
activation and the kernel it is handed and contracts the codes
(`lightcomp.quant._int_forward`), or, where the activation's scales run along a contracted
axis (per input channel), fake-quantizes the activation and contracts in float. The layer's
own code (dtype promotion, padding, bias, reshapes) runs unchanged. linen's ``nn.Einsum``
calls ``jnp.einsum`` directly; it is computed here from its own attributes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from flax import nnx
from flax.linen.dtypes import promote_dtype
from jax import lax

from lightcomp.quant._fake_quant import fake_quant_in
from lightcomp.quant._int_forward import (
    IntForward,
    act_layout,
    einsum_parts,
    int_compatible,
    int_ste_conv,
    int_ste_dot_general,
    int_ste_einsum,
)

# layer class -> the attribute holding its contraction op (None: linen's Einsum, no such op)
OP_ATTRS: dict[type, str | None] = {
    nn.Dense: "dot_general",
    nn.DenseGeneral: "dot_general",
    nn.Conv: "conv_general_dilated",
    nn.Einsum: None,
    nnx.Linear: "dot_general",
    nnx.LinearGeneral: "dot_general",
    nnx.Conv: "conv_general_dilated",
    nnx.Einsum: "einsum_op",
}
_STANDARD = (None, lax.dot_general, lax.conv_general_dilated, jnp.einsum)
_CLS_ATTRS = ("dot_general_cls", "conv_general_dilated_cls")


def op_attr(mod: Any) -> str | bool | None:
    """The op attribute of a layer the integer forward runs; None for linen's Einsum; False
    for another layer type or a layer with a custom op (it runs in float)."""
    cls = next((c for c in OP_ATTRS if type(mod) is c), None) or next(
        (c for c in OP_ATTRS if isinstance(mod, c)), None
    )
    if cls is None:
        return False
    attr = OP_ATTRS[cls]
    custom = [getattr(mod, a, None) for a in (*_CLS_ATTRS, *(() if attr is None else (attr,)))]
    if any(c is not None and not any(c is s for s in _STANDARD) for c in custom):
        return False
    return attr


@dataclasses.dataclass(frozen=True, eq=False)
class LayerOp:
    """An injectable ``dot_general`` / ``conv_general_dilated`` / ``einsum_op``.

    Attributes:
      spec: the `IntForward` configuration.
      lo_hi: the activation's fixed range in its layout's view, or None (dynamic).
      strict: refuse the float fallback (``compute="int8"``).
      path: the layer's path, for messages.
    """

    spec: IntForward
    lo_hi: Any
    strict: bool
    path: str

    def _usable(self, shape, contracted) -> bool:
        if int_compatible(act_layout(tuple(shape), self.spec.axis), tuple(contracted)):
            return True
        if self.strict:
            raise ValueError(
                f"layer {self.path!r}: compute='int8' needs activation scales constant along "
                f"the contracted axes {tuple(contracted)} (axis=None or 'tokens' for a Dense)"
            )
        return False

    def _fake(self, x):
        s = self.spec
        lay = act_layout(tuple(x.shape), s.axis)
        clipped = s.clipped and self.lo_hi is not None
        return fake_quant_in(
            x, lay, self.lo_hi, bits=s.bits, symmetric=s.symmetric, clipped=clipped
        )

    def dot_general(self, lhs, rhs, dimension_numbers, precision=None, **kw):
        (lc_, rc_), (lb, rb) = dimension_numbers
        dims = tuple(
            (tuple(a % lhs.ndim for a in left), tuple(a % rhs.ndim for a in right))
            for left, right in ((lc_, rc_), (lb, rb))
        )
        if self._usable(lhs.shape, dims[0][0]):
            return int_ste_dot_general(lhs, rhs, dims, self.spec, self.lo_hi)
        kw.pop("out_sharding", None)
        return lax.dot_general(self._fake(lhs), rhs, dims, precision=precision, **kw)

    def conv_general_dilated(self, lhs, rhs, window_strides, padding, lhs_dilation=None,
                             rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                             precision=None, **kw):  # fmt: skip
        dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
        conv = dict(
            window_strides=tuple(window_strides),
            padding=padding if isinstance(padding, str) else tuple(map(tuple, padding)),
            lhs_dilation=None if lhs_dilation is None else tuple(lhs_dilation),
            rhs_dilation=None if rhs_dilation is None else tuple(rhs_dilation),
            dimension_numbers=dn,
            feature_group_count=feature_group_count,
        )
        if self._usable(lhs.shape, dn.lhs_spec[1:]):
            return int_ste_conv(lhs, rhs, tuple(conv.items()), self.spec, self.lo_hi)
        kw.pop("out_sharding", None)
        return lax.conv_general_dilated(self._fake(lhs), rhs, precision=precision, **conv, **kw)

    def einsum(self, eq, lhs, rhs, precision=None, **kw):
        a, _, out = einsum_parts(eq, lhs.shape, rhs.shape)
        if self._usable(lhs.shape, [i for i, c in enumerate(a) if c not in out]):
            return int_ste_einsum(eq, lhs, rhs, self.spec, self.lo_hi)
        kw.pop("out_sharding", None)
        return jnp.einsum(eq, self._fake(lhs), rhs, precision=precision, **kw)

    def for_attr(self, attr: str):
        return {"dot_general": self.dot_general, "conv_general_dilated": self.conv_general_dilated,
                "einsum_op": self.einsum}[attr]  # fmt: skip


def call_linen(mod: nn.Module, attr: str | None, op: LayerOp, args, kwargs):
    """A bound linen layer's ``__call__(*args, **kwargs)`` with its op replaced by ``op``."""
    params = mod.variables["params"]
    if attr is not None:
        clone = mod.clone(parent=None, **{attr: op.for_attr(attr)})
        return clone.apply({"params": params}, *args, **kwargs)
    x, *rest = args  # nn.Einsum: jnp.einsum has no injectable op
    eq = kwargs.get("einsum_str", rest[0] if rest else None) or mod.einsum_str
    x, kernel, bias = promote_dtype(x, params["kernel"], params.get("bias"), dtype=mod.dtype)
    y = op.einsum(eq, x, kernel, precision=mod.precision)
    if bias is None:
        return y
    _, b, out = einsum_parts(eq, x.shape, kernel.shape)
    return y + jnp.reshape(bias, [kernel.shape[b.index(c)] if c in b else 1 for c in out])


def call_nnx(mod: nnx.Module, attr: str, op: LayerOp, args, kwargs):
    """An nnx layer's ``__call__(*args, **kwargs)`` with its op replaced by ``op`` meanwhile."""
    old = getattr(mod, attr)
    setattr(mod, attr, op.for_attr(attr))
    try:
        return mod(*args, **kwargs)
    finally:
        setattr(mod, attr, old)
