"""The 0.1.0 module path lightcomp.act_quant still imports the same objects."""

import lightcomp.act_quant as old
from lightcomp import quant


def test_old_path_names_the_same_objects():
    for name in old.__all__:
        assert getattr(old, name) is getattr(quant, name)
