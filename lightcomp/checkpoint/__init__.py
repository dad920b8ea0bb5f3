"""Save, restore and resume a whole `DistillState` with orbax-checkpoint.

A checkpoint is one orbax step directory ``<directory>/<step>/`` holding three items:

- ``state``: every array of the state through ``StandardSave`` (params, optimizer
  state, the compression state with its boolean masks, uint8 assignments, centroids,
  ranges and LSQ scales, and the rng; ``None`` leaves of state trees are kept);
- ``config``: the caller's static configuration (bit widths, granularity, schedule
  parameters) as JSON, so a checkpoint says how its model was compressed;
- ``meta``: the path, shape and dtype of every leaf and which leaves are typed PRNG
  keys, as JSON, so a restore into a mismatching tree fails with a message that names
  the leaf, and keys come back as keys; and what a restore verifies: a BLAKE2b digest
  of every leaf's bytes as saved, the fingerprint of every compression state's
  configuration, the config's digest, and a seal of the item itself.

orbax writes a step into a temporary directory and renames it when complete, so a
process killed mid-save leaves the previous steps intact; `restore` and `latest_step`
only see complete steps. Nothing here ever deletes a checkpoint, except a `Manager`
with ``max_to_keep`` dropping old steps after a successful save.

`restore` verifies before it returns: a leaf whose bytes differ from its digest is a
`CheckpointError` naming the directory, step and leaf; a target built under another
compression configuration is refused with both configurations described;
``restore(..., fallback=True)`` restores the newest step that verifies and logs which
(``return_step=True`` also returns it). Checkpoints of lightcomp 0.1.0 have no
digests: they restore, unverified, with a warning. orbax's own log records go to the
``lightcomp.checkpoint`` logger at DEBUG level, not to the terminal.

Typed PRNG keys (``jax.random.key``) are stored as their ``uint32`` key data
(``jax.random.key_data``) and rebuilt with ``jax.random.wrap_key_data`` and the
recorded implementation, because array serialization has no key dtype.
"""

from lightcomp.checkpoint._errors import CheckpointError
from lightcomp.checkpoint._manager import (
    Manager,
    latest_step,
    restore,
    restore_config,
    save,
    steps,
)

__all__ = [
    "CheckpointError",
    "Manager",
    "latest_step",
    "restore",
    "restore_config",
    "save",
    "steps",
]
