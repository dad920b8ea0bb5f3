"""Bad input across the public API: each case asserts the error type and that the message
names the argument (and the leaf path where there is one). No training, tiny shapes.

The issue's "silent wrong results" (a dict as patterns, float masks, booleans as numbers,
strings as booleans, NaN-making temperatures, out-of-range labels and codes, NaN params,
ragged batches, float16 Adam) and "unclear errors" are all here, beside a careless user's
None, bools, strings, NaN, negative and huge values.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lightcomp as lc

K = jax.random.key(0)
P = {"Dense_0": {"kernel": jnp.arange(12.0).reshape(4, 3) - 5.5, "bias": jnp.zeros(3)}}
S = lc.prune.magnitude(P)
X = jnp.linspace(-1.0, 1.0, 12).reshape(4, 3)
L = jnp.array([[1.0, 0.0, -1.0], [0.5, 0.2, 0.1]])
Y = jnp.array([0, 2])
NAN_X = X.at[0, 0].set(jnp.nan)
ROWS = (np.zeros((4, 4), np.float32), np.zeros(4, np.int32))


def apply(p, x):
    return x @ p["Dense_0"]["kernel"]


def noop_step(state, teacher, batch):
    del teacher, batch
    return state, {}


SGD = optax.sgd(0.1)
STEP = lc.train.make_step(apply, apply, SGD, lc.identity())


def _masks(dtype, shape=(4, 3)):
    return {"Dense_0": {"kernel": jnp.ones(shape, dtype), "bias": None}}


def _f16_adam():
    p16 = lc.train.cast_floating(P, jnp.float16)
    return lc.train.init_state(p16, optax.adam(1e-3), lc.identity(), K)


TE, VE = TypeError, ValueError


def C(name, error, match, fn, *args, **kwargs):
    """One case: ``fn(*args, **kwargs)`` raises ``error`` with a message matching ``match``."""
    return pytest.param(fn, args, kwargs, error, match, id=name)


# fmt: off
CASES = [
    # --- tree: a dict is not a pattern, a number is not a pattern
    C("select_dict", TE, r"include .*a dict is not a pattern", lc.tree.select, P),
    C("select_int", TE, "include must be a regex string", lc.tree.select, 123),
    C("select_exclude_dict", TE, "exclude", lc.tree.select, exclude={"a": 1}),
    C("select_list_of_ints", TE, "include must hold regex", lc.tree.select, [1, 2]),
    C("select_bad_regex", VE, "include pattern '\\('", lc.tree.select, "("),
    C("select_predicate", TE, "predicate must be callable", lc.tree.select, predicate=3),
    C("Select_dict", TE, "include", lc.tree.Select, include={"a": 1}),
    C("select_arg_int", TE, "select must be None", lc.tree.selected_paths, P, 3),
    C("select_arg_dict", TE, "select must be", lc.prune.magnitude, P, select={"a": 1}),
    C("select_no_match", VE, "pattern 'Conv'", lc.tree.selected_paths, P, "Conv"),
    C("tree_str_leaf", TE, "leaf 'w' is a str", lc.tree.paths, {"w": "abc"}),
    C("Axes_str", TE, "Axes.inputs", lc.tree.Axes, inputs="a"),
    # --- prune: booleans are not numbers, float scores are not masks
    C("masks_false", TE, "sparsity must be a number", lc.prune.masks, S, False),
    C("masks_true", TE, "sparsity must be a number", lc.prune.masks, S, True),
    C("masks_str", TE, "sparsity must be a float", lc.prune.masks, S, "0.5"),
    C("masks_1.5", VE, "sparsity must be finite", lc.prune.masks, S, 1.5),
    C("masks_nan", VE, "sparsity must be finite", lc.prune.masks, S, float("nan")),
    C("masks_scope", VE, "scope must be one of", lc.prune.masks, S, 0.5, scope="all"),
    C("masks_granularity", VE, "granularity", lc.prune.masks, S, 0.5, granularity="row"),
    C("masks_nm_str", VE, "granularity", lc.prune.masks, S, 0.5, granularity="2:x"),
    C("masks_keep_one_str", TE, "keep_one must be True or False",
      lc.prune.masks, S, 0.5, scope="global", keep_one="yes"),
    C("masks_none", VE, "scores has no leaves", lc.prune.masks, None, 0.5),
    C("masks_str_leaf", TE, "scores .*leaf 'a'", lc.prune.masks, {"a": "x"}, 0.5),
    C("masks_nan_scores", VE, "scores leaf 'w'.*NaN", lc.prune.masks, {"w": NAN_X}, 0.5),
    C("apply_masks_float", TE, "masks leaf 'Dense_0/kernel' must be a boolean array",
      lc.prune.apply_masks, P, S),
    C("apply_masks_int", TE, "masks leaf 'Dense_0/kernel' must be a boolean",
      lc.prune.apply_masks, P, _masks(jnp.int32)),
    C("apply_masks_shape", VE, "masks leaf 'Dense_0/kernel' has shape",
      lc.prune.apply_masks, P, _masks(bool, (3, 4))),
    C("apply_masks_tree", VE, "masks does not mirror", lc.prune.apply_masks, P, {"x": None}),
    C("gradient_tree", VE, "grads does not mirror", lc.prune.gradient, P, {"x": 1}),
    C("random_key_int", TE, "key must be a PRNG key", lc.prune.random_scores, 0, P),
    C("poly_final_bool", TE, "final", lc.prune.polynomial_schedule, 0.0, True, 0, 10),
    C("poly_steps", VE, "end_step", lc.prune.polynomial_schedule, 0.0, 0.5, 10, 5),
    C("poly_begin_float", TE, "begin_step must be an int",
      lc.prune.polynomial_schedule, 0.0, 0.5, 0.5, 10),
    C("poly_power", VE, "power", lc.prune.polynomial_schedule, 0.0, 0.5, 0, 10, power=-1),
    C("poly_frequency", VE, "frequency must be >= 1",
      lc.prune.polynomial_schedule, 0, 0.5, 0, 9, frequency=0),
    C("constant_str", TE, "sparsity must be a number", lc.prune.constant_schedule, "0.5"),
    C("one_shot_at", VE, "at_step must be >= 0", lc.prune.one_shot_schedule, 0.5, -1),
    C("iterative_empty", VE, "levels must be", lc.prune.iterative_schedule, [], 10),
    C("iterative_every", VE, "every must be", lc.prune.iterative_schedule, [0.5], 0),
    C("iterative_order", VE, "levels", lc.prune.iterative_schedule, [0.5, 0.2], 10),
    C("cosine_bool", TE, "alpha must be a number", lc.prune.cosine_fraction, True, 10),
    C("erk_sparsity", VE, "sparsity must be finite", lc.prune.erk, P, 2.0),
    C("NM_order", VE, r"n \(weights kept, 4\) must be <= m", lc.prune.NM, 4, 2),
    C("NM_bool", TE, "n must be an int", lc.prune.NM, True, 4),
    C("Block_zero", VE, "rows must be >= 1", lc.prune.Block, 0, 2),
    C("one_shot_score", VE, "score must", lc.prune.one_shot_prune, P, 0.5, score="foo"),
    # --- quant: strings are not booleans, a step size is > 0
    C("fq_symmetric_no", TE, "symmetric must be True or False, got 'no'",
      lc.quant.fake_quant, X, 8, symmetric="no"),
    C("fq_bits_1", VE, "bits must be in 2..16.*binarize", lc.quant.fake_quant, X, 1),
    C("fq_bits_float", TE, "bits must be an int", lc.quant.fake_quant, X, 8.0),
    C("fq_bits_bool", TE, "bits must be an int", lc.quant.fake_quant, X, True),
    C("fq_int_x", TE, "x must be a float", lc.quant.fake_quant, jnp.ones(3, jnp.int32), 8),
    C("fq_axis_range", VE, "axis=5 is out of range", lc.quant.fake_quant, X, 8, axis=5),
    C("fq_axis_bool", TE, "axis must be an int", lc.quant.fake_quant, X, 8, axis=True),
    C("fq_nan", VE, "x has 1 NaN/inf", lc.quant.fake_quant, NAN_X, 8),
    C("fq_range_order", VE, "range has min", lc.quant.fake_quant, X, 8, range=(1.0, -1.0)),
    C("fq_range_nan", VE, "range min", lc.quant.fake_quant, X, 8, range=(jnp.nan, 1.0)),
    C("fq_rounding", VE, "rounding must be", lc.quant.fake_quant, X, 8, rounding="up"),
    C("fq_stochastic_key", VE, "needs a PRNG key",
      lc.quant.fake_quant, X, 8, rounding="stochastic"),
    C("fq_group_divides", VE, "group_size=5", lc.quant.fake_quant, X, 8, group_size=5),
    C("fq_group_zero", VE, "group_size must be", lc.quant.fake_quant, X, 8, group_size=0),
    C("quantize_bits", VE, "bits must be in 2..16", lc.quant.quantize, X, 17),
    C("quantize_symmetric", TE, "symmetric", lc.quant.quantize, X, 8, symmetric="yes"),
    C("dequantize_array", TE, "qt must be a lightcomp.quant.QTensor", lc.quant.dequantize, X),
    C("lsq_scale_zero", VE, "scale must be > 0", lc.quant.lsq_fake_quant, X, jnp.float32(0.0), 8),
    C("lsq_scale_negative", VE, "scale must be > 0",
      lc.quant.lsq_fake_quant, X, jnp.float32(-1.0), 8),
    C("lsq_scale_nan", VE, "scale has 1 NaN/inf",
      lc.quant.lsq_fake_quant, X, jnp.float32(jnp.nan), 8),
    C("lsq_scale_int", TE, "scale must be a floating",
      lc.quant.lsq_fake_quant, X, jnp.ones((), jnp.int32), 8),
    C("lsq_scale_shape", VE, "scale has 5 entries",
      lc.quant.lsq_fake_quant, X, jnp.ones(5), 8, axis=-1),
    C("lsq_grad_scale", VE, "grad_scale must be finite",
      lc.quant.lsq_fake_quant, X, jnp.float32(0.1), 8, grad_scale=-1.0),
    C("percentile_q", VE, "q must be finite", lc.quant.percentile_range, X, 150.0),
    C("percentile_bool", TE, "q must be a number", lc.quant.percentile_range, X, True),
    C("ema_decay", VE, "decay must be finite",
      lc.quant.ema_range_update, lc.quant.ema_range_init(), X, decay=2.0),
    C("ema_init_str", TE, "shape must be a tuple", lc.quant.ema_range_init, "abc"),
    C("ema_init_negative", VE, "shape must be >= 0", lc.quant.ema_range_init, (-1,)),
    C("binarize_ste", VE, "ste must be one of", lc.quant.binarize, X, ste="foo"),
    C("cast_int_dtype", VE, "dtype must be one of", lc.quant.cast, X, jnp.int8),
    C("cast_saturate", TE, "saturate", lc.quant.cast, X, jnp.float16, saturate="no"),
    C("qrange_str", TE, "bits must be an int", lc.quant.qrange, "8"),
    # --- cluster: codes in [0, k), finite weights
    C("share_negative", VE, "assignments hold code -1",
      lc.cluster.share, jnp.ones(3), jnp.array([-1, 0, 1])),
    C("share_code_k", VE, "assignments hold code 3",
      lc.cluster.share, jnp.ones(3), jnp.array([3, 0, 1])),
    C("share_float_codes", TE, "assignments", lc.cluster.share, jnp.ones(3), jnp.ones(3)),
    C("share_int_centroids", TE, "centroids must be a floating",
      lc.cluster.share, jnp.ones(3, int), jnp.ones(3, jnp.uint8)),
    C("share_reduce", VE, "reduce must be one of",
      lc.cluster.share, jnp.ones(3), jnp.ones(3, jnp.uint8), reduce="max"),
    C("kmeans_k_zero", VE, "k must be >= 1", lc.cluster.kmeans, X, 0),
    C("kmeans_k_float", TE, "k must be an int", lc.cluster.kmeans, X, 2.0),
    C("kmeans_k_many", VE, "k=100 is more than", lc.cluster.kmeans, X, 100),
    C("kmeans_init", VE, "init must be one of", lc.cluster.kmeans, X, 2, init="foo"),
    C("kmeans_nan", VE, "x has 1 NaN/inf", lc.cluster.kmeans, NAN_X, 2),
    C("kmeans_nan_leaf", VE, "x at leaf 'w'", lc.cluster.kmeans_tree, {"w": NAN_X}, 2),
    C("kmeans_tol", VE, "tol must be finite", lc.cluster.kmeans, X, 2, tol=-1.0),
    C("kmeans_flag_str", TE, "preserve_zeros must be True or False",
      lc.cluster.kmeans, X, 2, preserve_zeros="yes"),
    C("kmeans_tree_k_bool", TE, "k must be an int", lc.cluster.kmeans_tree, P, True),
    # --- distill: finite logits, a sane temperature, labels in [0, classes)
    C("kl_nan_student", VE, "student_logits has 1 NaN/inf",
      lc.distill.soft_kl, L.at[0, 0].set(jnp.nan), L),
    C("kl_inf_teacher", VE, "teacher_logits has 1 NaN/inf",
      lc.distill.soft_kl, L, L.at[0, 0].set(jnp.inf)),
    C("kl_T_huge", VE, r"temperature must be in \[0.01", lc.distill.soft_kl, L, L, 1e30),
    C("kl_T_tiny", VE, r"temperature must be in \[0.01", lc.distill.soft_kl, L, L, 1e-20),
    C("kl_T_zero", VE, "temperature must be finite", lc.distill.soft_kl, L, L, 0.0),
    C("kl_T_bool", TE, "temperature must be a number", lc.distill.soft_kl, L, L, True),
    C("kl_T_str", TE, "temperature must be a number", lc.distill.soft_kl, L, L, "4"),
    C("kl_shapes", VE, "teacher_logits has shape", lc.distill.soft_kl, L, jnp.ones((2, 4))),
    C("kl_int", TE, "student_logits must", lc.distill.soft_kl, jnp.ones((2, 3), int), L),
    C("kl_rank0", VE, "rank >= 1", lc.distill.soft_kl, jnp.float32(1), jnp.float32(1)),
    C("kl_none", TE, "student_logits must be", lc.distill.soft_kl, None, L),
    C("loss_alpha_zero_no_labels", VE, r"alpha=0\.0 .*labels is None",
      lc.distill.loss, L, L, alpha=0.0),
    C("loss_alpha_bool", TE, "alpha must be a num", lc.distill.loss, L, L, Y, alpha=True),
    C("loss_alpha_2", VE, "alpha must be finite", lc.distill.loss, L, L, Y, alpha=2.0),
    C("loss_kind", VE, "kind must be one of", lc.distill.loss, L, L, kind="js"),
    C("loss_label_high", VE, r"labels must be in \[0, 3\)",
      lc.distill.loss, L, L, jnp.array([0, 3])),
    C("loss_label_minus1", VE, r"labels must be in \[0, 3\)",
      lc.distill.loss, L, L, jnp.array([0, -1])),
    C("loss_labels_bool", TE, "labels", lc.distill.loss, L, L, jnp.array([True, False])),
    C("ce_labels_str", TE, "labels must be integer", lc.distill.cross_entropy, L, "ab"),
    C("loss_weights_negative", VE, "weights must be >= 0",
      lc.distill.loss, L, L, weights=jnp.array([1.0, -1.0])),
    C("loss_weights_shape", VE, "weights", lc.distill.loss, L, L, weights=jnp.ones(3)),
    C("loss_weights_nan", VE, "weights has 1 NaN/inf",
      lc.distill.loss, L, L, weights=jnp.array([1.0, jnp.nan])),
    C("feature_width", VE, "student_features", lc.distill.feature_mse, L, jnp.ones((2, 4))),
    # --- transforms
    C("pruning_bool", TE, "sparsity_or_schedule must be a float", lc.pruning, True),
    C("pruning_2", VE, "sparsity_or_schedule must be finite", lc.pruning, 2.0),
    C("pruning_score", VE, "score must be one of", lc.pruning, 0.5, score="foo"),
    C("pruning_every", VE, "update_every must be >= 1", lc.pruning, 0.5, update_every=0),
    C("sharing_k_bool", TE, "k must be an int", lc.weight_sharing, True),
    C("sharing_k_zero", VE, r"k must be in 2\.\.65536", lc.weight_sharing, 0),
    C("fq_transform_no", TE, "symmetric", lc.fake_quantization, 8, symmetric="no"),
    C("chain_int", TE, "chain argument 1", lc.chain, lc.identity(), 3),
    C("chain_optax", TE, "chain argument 0", lc.chain, SGD),
    C("pruning_init_key", TE, "key must be a PRNG key", lc.pruning(0.5).init, P, 0),
    C("sharing_init_key", TE, "key must be a PRNG", lc.weight_sharing(2).init, P, "a"),
    C("fq_init_key", TE, "key must be a PRNG key", lc.fake_quantization(8).init, P, None),
    C("identity_init_key", TE, "key must be a PRNG key", lc.identity().init, P, 0),
    C("chain_init_key", TE, "key must be a PRNG", lc.chain(lc.identity()).init, P, 0),
    C("apply_other_state", TE, "pruning expects a PruningState",
      lc.pruning(0.5).apply, P, lc.weight_sharing(2).init(P, K)),
    # --- train
    C("step_alpha_bool", TE, "alpha must be a number",
      lc.train.make_step, apply, apply, SGD, lc.identity(), alpha=True),
    C("step_T_huge", VE, "temperature must be finite and in",
      lc.train.make_step, apply, apply, SGD, lc.identity(), temperature=1e30),
    C("step_apply", TE, "student_apply", lc.train.make_step, 1, apply, SGD, lc.identity()),
    C("step_optimizer", TE, "optimizer must be an optax",
      lc.train.make_step, apply, apply, "adam", lc.identity()),
    C("step_transform", TE, "transform must", lc.train.make_step, apply, apply, SGD, None),
    C("step_axis_int", TE, "axis_name must be a string",
      lc.train.make_step, apply, apply, SGD, lc.identity(), axis_name=1),
    C("init_nan", VE, "params at leaf 'w' has 1 NaN/inf",
      lc.train.init_state, {"w": NAN_X}, SGD, lc.identity(), K),
    C("init_inf", VE, "params at leaf 'a/b'",
      lc.train.init_state, {"a": {"b": jnp.array([jnp.inf])}}, SGD, lc.identity(), K),
    C("init_empty", VE, "params has no leaves", lc.train.init_state, None, SGD, lc.identity(), K),
    C("init_float16_adam", VE, "params are float16 .*opt_state leaf '0/mu/", _f16_adam),
    C("init_key", TE, "key must be a PRNG", lc.train.init_state, P, SGD, lc.identity(), 0),
    C("init_str_leaf", TE, "params .*leaf 'w' is a str",
      lc.train.init_state, {"w": "a"}, SGD, lc.identity(), K),
    C("cast_floating_int", TE, "dtype must be a float", lc.train.cast_floating, P, jnp.int8),
    C("fit_steps_float", TE, "steps must be an int, got 2.5",
      lc.train.fit, noop_step, 0, None, [], steps=2.5),
    C("fit_steps_bool", TE, "steps must", lc.train.fit, noop_step, 0, None, [], steps=True),
    C("fit_steps_negative", VE, "steps", lc.train.fit, noop_step, 0, None, [], steps=-1),
    C("fit_log_every", VE, "log_every must be >= 1",
      lc.train.fit, noop_step, 0, None, [], steps=1, log_every=0),
    C("fit_eval_every", TE, "eval_every must be an int",
      lc.train.fit, noop_step, 0, None, [], steps=1, eval_every=1.0),
    C("fit_step", TE, "step must be callable", lc.train.fit, 3, 0, None, [], steps=1),
    C("fit_progress", TE, "progress must be True or False",
      lc.train.fit, noop_step, 0, None, [], steps=1, progress="no"),
    C("evaluate_bs_zero", VE, "batch_size must be >= 1",
      lc.train.evaluate, apply, P, ROWS, batch_size=0),
    C("evaluate_bs_float", TE, "batch_size must be an int",
      lc.train.evaluate, apply, P, ROWS, batch_size=2.5),
    C("evaluate_batches_int", TE, "batches must be an", lc.train.evaluate, apply, P, 5),
    C("evaluate_empty", VE, "batches is empty", lc.train.evaluate, apply, P, []),
    C("evaluate_lengths", VE, "inputs and labels differ in length",
      lc.train.evaluate, apply, P, (ROWS[0], ROWS[1][:3])),
    C("wrap_optax_key", TE, "key must be a PRNG", lc.wrap_optax, SGD, lc.identity(), 3),
    C("effective_plain", VE, "opt_state holds no", lc.effective, P, SGD.init(P)),
    # --- parallel
    C("pmap_no_axis", VE, "built without axis_name.*axis_name='batch'",
      lc.parallel.pmap_step, STEP),
    C("shard_ragged", VE, "batch leaf 'labels' has 6 rows but leaf 'inputs' has 8",
      lc.parallel.shard_batch, {"inputs": jnp.zeros((8, 4)), "labels": jnp.zeros(6, int)}, 2),
    C("shard_n_zero", VE, "n_devices must be >= 1", lc.parallel.shard_batch, {"x": X}, 0),
    C("shard_n_bool", TE, "n_devices must be", lc.parallel.shard_batch, {"x": X}, True),
    C("shard_divisible", VE, "batch leaf 'x' has 4", lc.parallel.shard_batch, {"x": X}, 3),
    C("shard_scalar", VE, "leaf 'x'", lc.parallel.shard_batch, {"x": jnp.ones(())}, 1),
    C("pmap_int", TE, "step must be callable", lc.parallel.pmap_step, 3),
    C("data_parallel_mesh", TE, "mesh must be", lc.parallel.data_parallel, STEP, None),
    # --- export and checkpoint
    C("pack_prng_key", TE, "params leaf 'rng' is a PRNG key", lc.export.pack, {"rng": K, **P}),
    C("pack_object", TE, "params leaf 'a' has dtype object",
      lc.export.pack, {"a": np.array([object()])}),
    C("pack_str", TE, "params leaf 'a' is a str", lc.export.pack, {"a": "x"}),
    C("pack_entropy", TE, "entropy must be True", lc.export.pack, P, entropy="yes"),
    C("unpack_dict", TE, "packed must be a lightcomp.export.Packed", lc.export.unpack, P),
    C("unpack_none", TE, "packed must be a lightcomp", lc.export.unpack, None),
    C("export_load_int", TE, "path must be a str or os.PathLike", lc.export.load, 3),
    C("export_save_packed", TE, "packed must be", lc.export.save, "x.lcpk", P),
    C("ckpt_dir_int", TE, "directory must be a str", lc.checkpoint.save, 3, {"a": X}, 1),
    C("ckpt_restore_dir_int", TE, "directory must", lc.checkpoint.restore, 3, {"a": X}),
    C("ckpt_steps_dir_int", TE, "directory must be a str", lc.checkpoint.steps, 3),
    C("serve_dict", TE, "packed must be a lightcomp", lc.serve.from_packed, P),
    # --- data and post-training
    C("digits_seed_bool", TE, "seed must be an int", lc.data.load_digits, seed=True),
    C("batches_bs_bool", TE, "batch_size must be an int", lc.data.batches, *ROWS, True),
    C("batches_drop_str", TE, "drop_last", lc.data.batches, *ROWS, 2, drop_last="no"),
    C("gptq_bits", VE, "bits must", lc.posttrain.gptq, apply, P, jnp.ones((4, 4)), bits=0),
    C("wanda_bool", TE, "sparsity must be a number",
      lc.posttrain.wanda, apply, P, jnp.ones((4, 4)), sparsity=True),
    C("gptq_apply", TE, "apply_fn", lc.posttrain.gptq, 3, P, jnp.ones((4, 4)), bits=4),
]
# fmt: on


@pytest.mark.parametrize(("fn", "args", "kwargs", "error", "match"), CASES)
def test_bad_input_is_refused_naming_the_argument(fn, args, kwargs, error, match):
    with pytest.raises(error, match=match):
        fn(*args, **kwargs)


def test_there_are_at_least_100_cases():
    assert len(CASES) >= 100
    assert len({c.id for c in CASES}) == len(CASES)


# ------------------------------------------------------------ refused before any work


def _counting_step():
    calls = []

    def step(state, teacher, batch):
        calls.append(batch)
        return state, {"loss": jnp.float32(1.0)}

    return step, calls


@pytest.mark.parametrize(
    "kwargs",
    [dict(steps=2.5), dict(steps=2, log_every=0), dict(steps=2, progress="no"), dict(steps=-1)],
)
def test_fit_checks_its_arguments_before_the_first_step(kwargs):
    step, calls = _counting_step()
    with pytest.raises((TypeError, ValueError)):
        lc.train.fit(step, 0, None, iter([{"labels": np.zeros(2, np.int32)}] * 3), **kwargs)
    assert calls == []


def test_fit_refuses_a_negative_host_label_before_its_step():
    step, calls = _counting_step()
    good, bad = {"labels": np.array([0, 1], np.int32)}, {"labels": np.array([0, -1], np.int32)}
    with pytest.raises(ValueError, match="batch of step 2 has label -1"):
        lc.train.fit(step, 0, None, iter([good, bad, good]), steps=3, progress=False)
    assert len(calls) == 1


@pytest.mark.parametrize("log_every", [1, 2])
def test_fit_names_the_step_of_a_non_finite_loss(log_every):
    def step(state, teacher, batch):  # the loss is NaN from the second step on
        return state + 1, {"loss": jnp.where(state >= 1, jnp.nan, 1.0)}

    with pytest.raises(ValueError, match="the loss is nan at step 2"):
        lc.train.fit(
            step, jnp.int32(0), None, iter([{}] * 4), steps=4, log_every=log_every, progress=False
        )


@pytest.mark.parametrize(("labels", "match"), [(-1, "2 labels outside"), (3, "2 labels outside")])
def test_evaluate_refuses_labels_outside_the_classes(labels, match):
    x = np.ones((4, 4), np.float32)
    y = np.array([0, 1, labels, labels], np.int32)
    with pytest.raises(ValueError, match=f"batch 1 \\(counting from 0\\) has {match}"):
        lc.train.evaluate(apply, P, (x, y), batch_size=2)


def test_evaluate_names_the_batch_of_a_non_finite_loss():
    x = np.ones((4, 4), np.float32)
    x[3, 0] = np.inf
    with pytest.raises(ValueError, match="the loss is nan on batch 1"):
        lc.train.evaluate(apply, P, (x, np.zeros(4, np.int32)), batch_size=2)


def test_bad_saves_write_nothing(tmp_path):
    with pytest.raises(TypeError, match="packed must be"):
        lc.export.save(tmp_path / "m.lcpk", P)
    with pytest.raises(TypeError, match="step must be an int"):
        lc.checkpoint.save(tmp_path / "ckpt", {"a": X}, 1.5)
    assert list(tmp_path.iterdir()) == []
