"""Packing a compressed model into real bytes: a file that loads back bit for bit.

`pack` looks at the *effective* parameters (what the student computes with,
``transform.apply(params, comp_state)``) on the host and, per leaf, searches for the
smallest encoding that reproduces the leaf bit for bit, verifying each candidate by
decoding it before choosing it. It needs nothing from the transforms' states: what
pruning, weight sharing and quantization left is found in the values.

A leaf is stored as three independent parts:

* positions of the non-zeros (when the leaf has exact zeros): a bitmask, or the
  relative indices of the non-zeros in ``b``-bit gaps with an escape symbol for long
  runs (Deep Compression's relative-index encoding; its filler zeros become a "skip"
  symbol here, which costs no value slot), whichever is smaller;
* the values (all of them, or the non-zeros): dense floats in the smallest float dtype
  that holds them exactly (float32 / bfloat16 / float16); a codebook of the ``k``
  distinct values plus ``ceil(log2 k)``-bit indices; or a uniform integer grid
  ``x = float32(n * scale)`` cast to the leaf's dtype, detected per tensor, per channel
  or per group, with a tensor-wide offset or per-group zero points, the integers
  bit-packed at their width (1..16 bits, across byte boundaries);
* the positions of negative zeros, if any (they differ in one bit from ``+0``).

Every integer stream (indices, grid integers, gaps, the bitmask) is stored bit-packed
at fixed width, or with canonical Huffman coding (as Deep Compression does), or with
``zlib``/``lzma`` from the standard library, whichever is measured smaller.

`integers` reads a leaf stored on a grid back as its integers and float32 scales (what
`lightcomp.serve.from_packed` serves), without changing the file.

The file (format version 1, layout in ``lightcomp/export/_format.py``): a 64-byte
header (magic ``b"\\x89LCPACK\\n"``, version, flags, manifest and payload lengths, the
SHA-256 of the rest), a JSON manifest (the tree's structure and, per leaf, its
`lightcomp.tree.path_str` path, shape, dtype, encoding and parts) and the payload. Its
size is exactly ``header_bytes + nbytes``; `report` gives both.

References:
  Han, Mao, Dally, "Deep Compression: Compressing Deep Neural Networks with Pruning,
  Trained Quantization and Huffman Coding", ICLR 2016.
"""

from lightcomp.export._file import load, save
from lightcomp.export._format import FORMAT_VERSION, MAGIC
from lightcomp.export._integers import Integers, integers
from lightcomp.export._pack import Packed, pack, unpack
from lightcomp.export._report import report, report_table

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "Integers",
    "Packed",
    "integers",
    "load",
    "pack",
    "report",
    "report_table",
    "save",
    "unpack",
]
