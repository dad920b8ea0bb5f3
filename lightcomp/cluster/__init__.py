"""Weight sharing: a fast, jittable 1-D k-means, trainable shared centroids, channel merging.

Deep-Compression-style weight sharing (Han et al. 2016) as pure functions: `kmeans` fits
``k`` centroids to the values of an array (or of each channel), `share` turns
``(centroids, assignments)`` back into weights with a gradient for the centroids,
`merge_channels` shares whole output channels, and `cluster_report` sizes the result.
"""

from lightcomp.cluster._inits import INITS
from lightcomp.cluster._kmeans import KMeansInfo, index_dtype, kmeans, kmeans_tree
from lightcomp.cluster._merge import MergeInfo, merge_channels
from lightcomp.cluster._report import LeafReport, cluster_report
from lightcomp.cluster._share import inertia, share

__all__ = [
    "INITS",
    "KMeansInfo",
    "LeafReport",
    "MergeInfo",
    "cluster_report",
    "index_dtype",
    "inertia",
    "kmeans",
    "kmeans_tree",
    "merge_channels",
    "share",
]
