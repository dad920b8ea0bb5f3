"""NumPy references and random logits shared by the distill tests."""

import numpy as np


def np_log_softmax(x):
    x = np.asarray(x, np.float64)
    z = x - x.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_wmean(per_token, weights=None):
    """The mean over tokens, weighted: ``sum(w * v) / sum(w)``."""
    if weights is None:
        return per_token.mean()
    w = np.asarray(weights, np.float64)
    return (w * per_token).sum() / w.sum()


def np_soft_kl(s, t, temp, weights=None):
    ls, lt = np_log_softmax(s / temp), np_log_softmax(t / temp)
    kl = (np.exp(lt) * (lt - ls)).sum(-1)
    return temp**2 * np_wmean(kl, weights)


def np_ce(s, labels, weights=None):
    ls = np_log_softmax(s)
    return np_wmean(-np.take_along_axis(ls, labels[..., None], -1)[..., 0], weights)


def np_mse(s, t, weights=None):
    return np_wmean(((np.asarray(s, np.float64) - t) ** 2).mean(-1), weights)


def np_attention(f, p):
    a = (np.abs(np.asarray(f, np.float64)) ** p).mean(-1).reshape(f.shape[0], -1)
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def logits(seed, shape=(6, 10), scale=3.0):
    rng = np.random.default_rng(seed)
    return (scale * rng.normal(size=shape)).astype(np.float32)


def token_weights(seed, shape):
    """Random padding: each row keeps a random prefix (at least one token), as a bool mask."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, shape[-1] + 1, size=shape[:-1])
    return np.arange(shape[-1]) < lengths[..., None]
