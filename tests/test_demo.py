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
        ({"seed": -1}, "--seed must be in 0..4294967295"),
        ({"seed": 2**32}, "--seed"),
        ({"sparsity": float("nan")}, "--sparsity must be finite"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"teacher": (16, 0)}, "teacher hidden layer size"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_options_are_named_before_any_work(tmp_path, change, match):
    cfg = dataclasses.replace(demo.DemoConfig(out=str(tmp_path / "m.lcpk")), **change)
    with pytest.raises(ValueError, match=match):
        demo.check_config(cfg)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"bits": True}, "--bits must be an int"),  # a bool is not a number
        ({"steps": 2.5}, "--steps must be an int"),
        ({"seed": "0"}, "--seed must be an int"),
        ({"sparsity": "0.5"}, "--sparsity must be a number"),
        ({"progress": "yes"}, "progress must be True or False"),
        ({"out": 3}, "--out must be a file path"),
        ({"student": 16}, "student must be a tuple"),
    ],
)
def test_options_of_the_wrong_type(tmp_path, change, match):
    cfg = dataclasses.replace(demo.DemoConfig(out=str(tmp_path / "m.lcpk")), **change)
    with pytest.raises(TypeError, match=match):
        demo.check_config(cfg)
    with pytest.raises(TypeError, match="cfg must be a DemoConfig"):
        demo.check_config({"bits": 3})


def test_out_that_is_a_directory(tmp_path):
    with pytest.raises(ValueError, match="is a directory"):
        demo.check_config(demo.DemoConfig(out=str(tmp_path)))


def test_defaults_are_valid(tmp_path):
    demo.check_config(demo.DemoConfig(out=str(tmp_path / "m.lcpk")))
