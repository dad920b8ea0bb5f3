"""Serving the MLP with lightcomp: ``lc.serve.linen`` on ``lc.serve.from_packed``.

The quantized kernels are fake-quantized (8-bit symmetric per output channel), packed
(``lc.export.pack``) and read back as ``QTensor``s (int8 codes); ``lc.serve.linen(model)``
runs ``lc.models.MLP`` unchanged with one int8 x int8 -> int32 dot per layer and the
activations quantized per tensor, dynamically; the same with the codes carried in bfloat16
(``operands="bfloat16"``: the same exact sums). Variants measured besides (the choices of
``lc.serve``): 4-bit kernels held two per byte (``PackedInt4``), one int8 per code, or as
``jnp.int4`` (a forward by hand: ``lc.serve`` does not hold ``jnp.int4``), and a
16-value weight-sharing codebook served as int8 codes (gathered once, at load) or by a
gather inside the compiled forward followed by a float32 matmul.
"""

from __future__ import annotations

import _serving as S
import flax
import jax
import jax.numpy as jnp
import numpy as np

import lightcomp as lc


def _quantized(params, bits, share=None):
    def one(path, w):
        if w.ndim != 2:
            return w
        if share is not None:
            c, a = lc.cluster.kmeans(w, share)
            w = lc.cluster.share(c, a)
        return lc.quant.fake_quant(w, bits, axis=-1)

    return jax.tree_util.tree_map_with_path(one, params)


def _codebook(params, k=16):
    """``{layer: (centroids [k] float32, indices uint8 [in, out], bias)}`` of shared kernels."""
    out = {}
    for name, layer in params.items():
        c, a = lc.cluster.kmeans(layer["kernel"], k)
        out[name] = (c, a.astype(jnp.uint8), layer["bias"])
    return out


def _book_forward(book, x):
    """Gather each kernel from its codebook inside the compiled function, then float32 dots."""
    for i, name in enumerate(sorted(book)):
        c, idx, b = book[name]
        x = x @ jnp.take(c, idx.astype(jnp.int32)) + b
        if i < len(book) - 1:
            x = jax.nn.relu(x)
    return x


def _int4_forward(layers, x):
    """4-bit codes held as ``jnp.int4`` (converted to int8 in the forward), per-tensor inputs."""
    for i, (codes, scale, b) in enumerate(layers):
        qx = lc.quant.quantize(x)
        acc = jax.lax.dot_general(
            qx.values,
            codes.astype(jnp.int8),
            (((1,), (0,)), ((), ())),
            preferred_element_type=jnp.int32,
        )
        x = acc.astype(jnp.float32) * (qx.scale * scale) + b
        if i < len(layers) - 1:
            x = jax.nn.relu(x)
    return x


def build(args):
    x = jnp.asarray(S.inputs(args.batch))
    params = S.params_dict(jnp)
    model = lc.models.MLP(S.SIZES)
    f32 = jax.jit(model.apply)
    served = jax.jit(lc.serve.linen(model))
    served_bf16 = jax.jit(lc.serve.linen(model, operands="bfloat16"))
    fq8 = _quantized(params, 8)
    q8 = lc.serve.from_packed(lc.export.pack(fq8))
    fq4 = _quantized(params, 4)
    q4 = lc.serve.from_packed(lc.export.pack(fq4))
    q4_int8 = lc.serve.from_packed(lc.export.pack(fq4), int4=False)
    qbook = lc.serve.from_packed(lc.export.pack(_quantized(params, 8, share=16)))
    int4 = [
        (
            jnp.asarray(q4_int8[n]["kernel"].values, jnp.int4),
            q4_int8[n]["kernel"].scale,
            q4[n]["bias"],
        )
        for n in sorted(q4)
    ]
    book = _codebook(params)
    book_fn = jax.jit(_book_forward)
    fv = {"params": params}

    def check():
        kernels = [q8[n]["kernel"] for n in sorted(q8)]
        nbytes = sum(k.values.nbytes for k in kernels)
        k4 = sum(q4[n]["kernel"].values.nbytes for n in q4)
        k4j = sum(c.addressable_shards[0].data.on_device_size_in_bytes() for c, _, _ in int4)
        lowered = served.lower(q8, x).compile().memory_analysis()
        err = S.relative_error(served(q8, x), f32(fv, x))
        same = bool(jnp.all(served_bf16(q8, x) == served(q8, x)))
        return (
            f"int8 kernels {nbytes} B (4-bit: {k4} B packed, {k4j} B as jnp.int4 on this "
            f"device; float32: {4 * nbytes} B); "
            f"compiled arguments {lowered.argument_size_in_bytes} B; "
            f"max|int8 - float32| / max|float32| = {err:.4f}; "
            f"bfloat16 operands give the int8 result bit for bit: {same}"
        )

    runners = {
        "f32": S.timed(f32, fv, x),
        "int8": S.timed(served, q8, x),
        "int8_bf16": S.timed(served_bf16, q8, x),
        "w4": S.timed(served, q4, x),
        "w4_int8": S.timed(served, q4_int8, x),
        "w4_jnp_int4": S.timed(jax.jit(_int4_forward), int4, x),
        "book_int8": S.timed(served, qbook, x),
        "book_float": S.timed(book_fn, book, x),
    }
    return runners, check


def versions() -> str:
    return f"lightcomp {lc.__version__}, jax {jax.__version__}, flax {flax.__version__}"


def lightcomp_codes(dump: str) -> str:
    """Given AQT's frozen scales, lightcomp's grid gives AQT's codes: ``equal N of M``."""
    data = np.load(dump)
    same = total = 0
    for (w, _), i in zip(S.weights(), range(len(S.SIZES)), strict=True):
        scale = data[f"Dense_{i}/scale"].reshape(-1)
        bound = jnp.asarray(scale * 127, jnp.float32)  # lightcomp: scale = max|range| / 127
        codes = lc.quant.quantize(jnp.asarray(w), 8, axis=-1, range=(-bound, bound)).values
        same += int(np.sum(np.asarray(codes) == data[f"Dense_{i}/value"]))
        total += w.size
    return f"{same} of {total}"


if __name__ == "__main__":
    S.main(build, versions)
