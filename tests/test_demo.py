"""Tests for lightcomp.demo's option checks (the run itself is tested in test_cli.py)."""

import dataclasses

import pytest

from lightcomp import demo


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"sparsity": 1.5}, "--sparsity"),
        ({"sparsity": -0.1}, "--sparsity"),
        ({"bits": 0}, "--bits"),
        ({"bits": 17}, "--bits"),
        ({"clusters": 1}, "--clusters"),
        ({"steps": 0}, "--steps"),
        ({"devices": 0}, "--devices"),
        ({"devices": 3}, "divide the batch"),
        ({"out": "/no/such/dir/model.lcpk"}, "does not exist"),
    ],
)
def test_bad_options_are_named_before_any_work(tmp_path, change, match):
    cfg = dataclasses.replace(demo.DemoConfig(out=str(tmp_path / "m.lcpk")), **change)
    with pytest.raises(ValueError, match=match):
        demo.check_config(cfg)


def test_out_that_is_a_directory(tmp_path):
    with pytest.raises(ValueError, match="is a directory"):
        demo.check_config(demo.DemoConfig(out=str(tmp_path)))


def test_defaults_are_valid(tmp_path):
    demo.check_config(demo.DemoConfig(out=str(tmp_path / "m.lcpk")))
