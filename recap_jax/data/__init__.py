"""Episode storage and training-batch loading."""

from recap_jax.data.loader import HORIZON, LoaderConfig, WindowLoader, norm_stats
from recap_jax.data.store import (
    ACTION_DIM,
    STATE_DIM,
    CorruptShardError,
    Episode,
    EpisodeStore,
    StoreError,
)

__all__ = [
    "ACTION_DIM",
    "HORIZON",
    "STATE_DIM",
    "CorruptShardError",
    "Episode",
    "EpisodeStore",
    "LoaderConfig",
    "StoreError",
    "WindowLoader",
    "norm_stats",
]
