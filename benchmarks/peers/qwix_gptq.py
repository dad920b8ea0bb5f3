"""qwix's GPTQ on given matrices: run in qwix's own virtual environment by bench_posttrain.py.

Usage: ``python qwix_gptq.py IN.npz OUT.npz BITS GROUP``. ``IN.npz`` holds ``w_<i>``
``[O, I]`` (rows are outputs) and ``h_<i>`` ``[I, I]``; ``OUT.npz`` gets the dequantized
``q_<i>`` and ``seconds_<i>`` (the first call, compile included) and ``again_<i>`` (a
second call on the same shapes). GROUP 0 means one scale per row.
"""

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from qwix._src.core import qarray
from qwix.contrib import gptq_core


def main():
    src, dst, bits, group = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    qtype = {4: jnp.int4, 8: jnp.int8}[bits]
    data = np.load(src)
    out = {}
    for i in range(len([k for k in data.files if k.startswith("w_")])):
        w, h = jnp.asarray(data[f"w_{i}"]), jnp.asarray(data[f"h_{i}"])
        tiled = {1: group} if group else {}
        how = qarray.HowToQuantize(qtype=qtype, channelwise_axes=[0], tiled_axes=tiled)
        fn = jax.jit(
            lambda w, h, how=how: qarray.dequantize(gptq_core.quantize_weight(w, h, how)[0])
        )
        t0 = time.perf_counter()
        q = jax.block_until_ready(fn(w, h))
        out[f"seconds_{i}"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        jax.block_until_ready(fn(w, h))
        out[f"again_{i}"] = time.perf_counter() - t0
        out[f"q_{i}"] = np.asarray(q, np.float32)
    np.savez(dst, **out)


if __name__ == "__main__":
    main()
