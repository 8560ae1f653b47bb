"""Training windows from the episode store: sampling, shuffling, host sharding, prefetch to device.

A *window* is taken at each imaged step ``t = image_steps[q]`` of an episode:

* ``image`` u8[H, W, 3] (the image of step t), ``state`` f32[32] (the state at t), ``t`` i32[] (the
  control step itself: the episode clock that a phase-conditioned policy reads);
* ``actions`` f32[30, 36], the executed actions at t, t+1, ..., t+29; past the episode end they repeat
  the last action and ``action_mask`` bool[30] is False there;
* ``prompt_ids`` i32[L] / ``prompt_mask`` bool[L]: the bare instruction, or — with a label annotation —
  ``recap_jax.advantage.format_prompt(instruction, label)``, tokenised by ``ByteTokenizer``;
  optionally ``uncond_prompt_ids`` / ``uncond_prompt_mask`` (the bare instruction, for indicator
  dropout);
* value mode: ``return`` f32[] read from a named per-imaged-step annotation;
* feature mode (``feature_annotation``, a frozen Qwen3-VL's cache, ``recap_jax.data.features``): instead of
  ``image`` and the prompt, ``context`` f32[L, C] / ``context_mask`` bool[L], the cached System-2 output of
  the window's image under its prompt variant (high / low / bare by the label), and with ``emit_uncond``
  ``uncond_context`` / ``uncond_context_mask`` (bare).

Order: the windows of all episodes are enumerated once (episode order of the store, then q); epoch e
uses the permutation ``default_rng([seed, e])``; step s of an epoch takes the slice
``[s*B, (s+1)*B)`` of it (B = global batch; the remainder is dropped) and process p keeps rows
``[p*B/P, (p+1)*B/P)`` of that slice. A batch is therefore a pure function of (seed, epoch, step),
and the position ``{"epoch", "step"}`` (counting batches handed to the trainer, not prefetched ones)
is all a checkpoint needs for an exact resume.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from recap_jax.data.store import ACTION_DIM, STATE_DIM, Episode, EpisodeStore
from recap_jax.models.tokenizer import ByteTokenizer

HORIZON = 30


@dataclasses.dataclass(frozen=True)
class LoaderConfig:
    """Loader settings.

    Attributes:
      batch_size: global batch size B (all processes together).
      horizon: action chunk length H.
      seed: shuffling seed.
      max_prompt_len: tokenizer length L.
      label_annotation: name of the int8 label annotation (1 high, 0 low, -1 none) used to build
        the conditioned prompt, or None for bare prompts.
      emit_uncond: also emit the bare prompt as ``uncond_prompt_ids`` / ``uncond_prompt_mask``.
      return_annotation: name of a float annotation emitted as ``return`` (value-function mode).
      kinds: keep only episodes whose ``tags["kind"]`` is in this tuple (None = all).
      feature_annotation: name of a System-2 feature cache (``features.write_feature_cache``) to emit
        ``context`` batches from, or None (images and prompt ids).
      exclude_episodes: episode ids left out (a held-out split, e.g. ``experiments.finetune.holdout_ids``).
    """

    batch_size: int
    horizon: int = HORIZON
    seed: int = 0
    max_prompt_len: int = 64
    label_annotation: str | None = None
    emit_uncond: bool = False
    return_annotation: str | None = None
    kinds: tuple[str, ...] | None = None
    feature_annotation: str | None = None
    exclude_episodes: tuple[int, ...] = ()


def norm_stats(episodes: EpisodeStore | Sequence[Episode], kinds: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Min–max statistics over every control step of the episodes (of ``tags["kind"]`` in ``kinds``).

    Returns: ``state_min``/``state_max`` f32[32], ``action_min``/``action_max`` f32[36].
    Raises ``ValueError`` when no episode qualifies.
    """
    it = episodes.iter_episodes() if isinstance(episodes, EpisodeStore) else iter(episodes)
    if kinds is not None:
        it = (e for e in it if e.tags.get("kind") in tuple(kinds))
    s_lo = np.full(STATE_DIM, np.inf, np.float32)
    s_hi = np.full(STATE_DIM, -np.inf, np.float32)
    a_lo = np.full(ACTION_DIM, np.inf, np.float32)
    a_hi = np.full(ACTION_DIM, -np.inf, np.float32)
    count = 0
    for ep in it:
        if ep.n_steps == 0:
            continue
        s_lo, s_hi = np.minimum(s_lo, ep.states.min(0)), np.maximum(s_hi, ep.states.max(0))
        a_lo, a_hi = np.minimum(a_lo, ep.actions.min(0)), np.maximum(a_hi, ep.actions.max(0))
        count += 1
    if count == 0:
        raise ValueError("norm_stats needs at least one non-empty episode")
    return {"state_min": s_lo, "state_max": s_hi, "action_min": a_lo, "action_max": a_hi}


def action_window(actions: np.ndarray, t: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """The chunk a window at control step ``t`` trains on: ``actions[t : t + horizon]``, padded past the
    episode's end with its last action. actions f32[T, A] → (chunk f32[horizon, A], mask bool[horizon],
    True on real steps)."""
    chunk = actions[t : t + horizon]
    n = chunk.shape[0]
    out = np.concatenate([chunk, np.repeat(chunk[-1:], horizon - n, 0)]) if n < horizon else chunk
    return out, np.arange(horizon) < n


class WindowLoader:
    """Shuffled, host-sharded, prefetching iterator of training batches (see the module docstring).

    Args:
      source: an ``EpisodeStore`` (its readable episodes and annotations are loaded into host memory)
        or a list of episodes (then annotations come from ``annotations={name: {episode_id: array}}``).
      config: ``LoaderConfig``.
      mesh: when given, batches are placed on the mesh with the data sharding (``train.put_batch``);
        otherwise numpy batches are yielded.
      process_index, process_count: host sharding (default: ``jax.process_index()/process_count()``).
      prefetch: batches prepared ahead by a background thread (0 = synchronous).
      tokenizer: anything with ``encode(text) -> (ids [1, L], mask [1, L])`` (default
        ``ByteTokenizer(max_prompt_len)``; a Qwen3-VL policy passes ``config.tokenizer()``).
    """

    def __init__(
        self,
        source: EpisodeStore | Sequence[Episode],
        config: LoaderConfig,
        *,
        mesh: Any = None,
        process_index: int | None = None,
        process_count: int | None = None,
        prefetch: int = 2,
        annotations: dict[str, dict[int, np.ndarray]] | None = None,
        tokenizer: Any = None,
    ):
        if process_index is None or process_count is None:
            import jax

            process_index = jax.process_index() if process_index is None else process_index
            process_count = jax.process_count() if process_count is None else process_count
        if config.batch_size <= 0 or config.batch_size % process_count:
            raise ValueError(f"batch_size {config.batch_size} must be a positive multiple of {process_count} processes")
        self.config = config
        self.mesh = mesh
        self.process_index, self.process_count = process_index, process_count
        self.local_batch_size = config.batch_size // process_count
        self.prefetch = prefetch
        self.tokenizer = tokenizer if tokenizer is not None else ByteTokenizer(config.max_prompt_len)

        if isinstance(source, EpisodeStore):
            episodes = source.load()
            names = [n for n in (config.label_annotation, config.return_annotation) if n]
            if config.feature_annotation:
                names += [config.feature_annotation, config.feature_annotation + "_mask"]
            annotations = {n: source.read_annotation(n) for n in names}
        else:
            episodes = list(source)
            annotations = dict(annotations or {})
        if config.kinds is not None:
            episodes = [e for e in episodes if e.tags.get("kind") in config.kinds]
        if config.exclude_episodes:
            excluded = set(int(i) for i in config.exclude_episodes)
            episodes = [e for e in episodes if e.episode_id not in excluded]
        self.episodes = [e for e in episodes if e.image_steps.size]
        if not self.episodes:
            raise ValueError("the loader found no episodes with imaged steps")
        shape = self.episodes[0].images.shape[1:]
        for e in self.episodes:
            if e.images.shape[1:] != shape:
                raise ValueError(f"episode {e.episode_id} has images {e.images.shape[1:]}, others {shape}")
        self.image_shape = shape

        ep_index = np.concatenate([np.full(e.image_steps.size, i, np.int32) for i, e in enumerate(self.episodes)])
        q_index = np.concatenate([np.arange(e.image_steps.size, dtype=np.int32) for e in self.episodes])
        self._ep_index, self._q_index = ep_index, q_index
        self.num_windows = int(ep_index.size)
        self.steps_per_epoch = self.num_windows // config.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"{self.num_windows} windows are fewer than one batch of {config.batch_size}")

        self._labels = self._per_window(annotations, config.label_annotation, np.int8, -1)
        self._returns = self._per_window(annotations, config.return_annotation, np.float32, None)
        self._features = None
        if config.feature_annotation:
            name = config.feature_annotation
            for n in (name, name + "_mask"):
                if n not in annotations:
                    raise KeyError(f"feature annotation {n!r} not available to the loader")
            feats, masks = annotations[name], annotations[name + "_mask"]
            for e in self.episodes:
                q = e.image_steps.size
                if e.episode_id not in feats or e.episode_id not in masks:
                    raise KeyError(f"feature annotation {name!r} has no entry for episode {e.episode_id}")
                f, m = feats[e.episode_id], masks[e.episode_id]
                if f.ndim != 4 or f.shape[:2] != (q, 3) or m.shape != f.shape[:3]:
                    raise ValueError(
                        f"feature annotation {name!r}: episode {e.episode_id} has {f.shape} / mask {m.shape}, "
                        f"expected [{q}, 3, L, C] / [{q}, 3, L]"
                    )
            self._features = (feats, masks)
        self._prompt_cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._format_prompt = None
        if config.label_annotation:
            from recap_jax.advantage import format_prompt

            self._format_prompt = format_prompt
        self.epoch, self.step = 0, 0
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()

    def _per_window(self, annotations, name, dtype, fill) -> np.ndarray | None:
        if not name:
            return None
        if name not in annotations:
            raise KeyError(f"annotation {name!r} not available to the loader")
        table = annotations[name]
        parts = []
        for e in self.episodes:
            if e.episode_id not in table:
                if fill is None:
                    raise KeyError(f"annotation {name!r} has no entry for episode {e.episode_id}")
                parts.append(np.full(e.image_steps.size, fill, dtype))
                continue
            v = np.asarray(table[e.episode_id])
            if v.shape != (e.image_steps.size,):
                raise ValueError(f"annotation {name!r}: episode {e.episode_id} has shape {v.shape}")
            parts.append(v.astype(dtype))
        return np.concatenate(parts)

    # ---------------------------------------------------------------- batches

    def _tokens(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        if text not in self._prompt_cache:
            ids, mask = self.tokenizer.encode(text)
            self._prompt_cache[text] = (ids[0], mask[0])
        return self._prompt_cache[text]

    def window_indices(self, epoch: int, step: int) -> np.ndarray:
        """Global window indices int [B_local] this process reads at (epoch, step)."""
        perm = np.random.default_rng([self.config.seed, epoch]).permutation(self.num_windows)
        start = step * self.config.batch_size + self.process_index * self.local_batch_size
        return perm[start : start + self.local_batch_size]

    def host_batch(self, epoch: int, step: int) -> dict[str, np.ndarray]:
        """This process's numpy batch at (epoch, step) (leading axis B_local = B / process_count)."""
        if not 0 <= step < self.steps_per_epoch:
            raise ValueError(f"step {step} outside [0, {self.steps_per_epoch}) of an epoch")
        idx = self.window_indices(epoch, step)
        h = self.config.horizon
        b = idx.size
        out = {
            "state": np.empty((b, STATE_DIM), np.float32),
            "t": np.empty((b,), np.int32),
            "actions": np.empty((b, h, ACTION_DIM), np.float32),
            "action_mask": np.zeros((b, h), bool),
        }
        if self._features is None:
            out["image"] = np.empty((b, *self.image_shape), np.uint8)
        prompts, bare, where = [], [], []
        for row, w in enumerate(idx):
            ep = self.episodes[self._ep_index[w]]
            q = self._q_index[w]
            t = int(ep.image_steps[q])
            where.append((ep.episode_id, q))
            if self._features is None:
                out["image"][row] = ep.images[q]
            out["state"][row] = ep.states[t]
            out["t"][row] = t
            out["actions"][row], out["action_mask"][row] = action_window(ep.actions, t, h)
            bare.append(ep.prompt)
            if self._format_prompt is not None:
                label = int(self._labels[w])
                prompts.append(self._format_prompt(ep.prompt, None if label < 0 else label))
            else:
                prompts.append(ep.prompt)
        if self._features is not None:
            from recap_jax.data.features import from_storage, variant_index

            feats, masks = self._features
            labels = self._labels[idx] if self._labels is not None else np.full(b, -1, np.int8)
            var = variant_index(labels)
            out["context"] = np.stack([from_storage(feats[e][q, v]) for (e, q), v in zip(where, var)])
            out["context_mask"] = np.stack([masks[e][q, v].astype(bool) for (e, q), v in zip(where, var)])
            if self.config.emit_uncond:
                out["uncond_context"] = np.stack([from_storage(feats[e][q, 2]) for e, q in where])
                out["uncond_context_mask"] = np.stack([masks[e][q, 2].astype(bool) for e, q in where])
            if self._returns is not None:
                out["return"] = self._returns[idx]
            return out
        toks = [self._tokens(p) for p in prompts]
        out["prompt_ids"] = np.stack([t[0] for t in toks])
        out["prompt_mask"] = np.stack([t[1] for t in toks])
        if self.config.emit_uncond:
            toks = [self._tokens(p) for p in bare]
            out["uncond_prompt_ids"] = np.stack([t[0] for t in toks])
            out["uncond_prompt_mask"] = np.stack([t[1] for t in toks])
        if self._returns is not None:
            out["return"] = self._returns[idx]
        return out

    def _place(self, batch: dict) -> dict:
        if self.mesh is None:
            return batch
        from recap_jax.train.sharding import put_batch

        return put_batch(batch, self.mesh)

    @staticmethod
    def _advance(epoch: int, step: int, steps_per_epoch: int) -> tuple[int, int]:
        step += 1
        return (epoch + 1, 0) if step == steps_per_epoch else (epoch, step)

    # ---------------------------------------------------------------- iteration and position

    def state_dict(self) -> dict[str, int]:
        """The position of the next batch to be handed out: ``{"epoch", "step", "seed", "num_windows"}``."""
        return {
            "epoch": int(self.epoch),
            "step": int(self.step),
            "seed": int(self.config.seed),
            "num_windows": self.num_windows,
        }

    def load_state_dict(self, position: dict[str, int]) -> None:
        """Moves to a saved position (stops any prefetching first).

        Raises ``ValueError`` when the position was saved with another seed or over a different set of
        windows (e.g. the store grew since): the batch order would then not continue exactly.
        """
        if int(position.get("seed", self.config.seed)) != self.config.seed:
            raise ValueError(
                f"loader position was saved with seed {position['seed']}, this loader has {self.config.seed}"
            )
        saved = int(position.get("num_windows", self.num_windows))
        if saved != self.num_windows:
            raise ValueError(
                f"loader position was saved over {saved} windows but this loader has {self.num_windows} "
                "(the store or the episode filter changed); an exact resume is impossible"
            )
        if not 0 <= int(position["step"]) < self.steps_per_epoch:
            raise ValueError(f"saved loader step {position['step']} outside [0, {self.steps_per_epoch})")
        self.close()
        self.epoch, self.step = int(position["epoch"]), int(position["step"])

    @staticmethod
    def _put(q: queue.Queue, item: tuple, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _producer(self, epoch: int, step: int, q: queue.Queue, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                item = (self._place(self.host_batch(epoch, step)), None)
                epoch, step = self._advance(epoch, step, self.steps_per_epoch)
                self._put(q, item, stop)
        except BaseException as e:  # forwarded to the consumer, raised by __next__
            self._put(q, (None, e), stop)

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        if self.prefetch <= 0:
            batch = self._place(self.host_batch(self.epoch, self.step))
        else:
            if self._thread is None:
                self._stop = threading.Event()
                self._queue = queue.Queue(maxsize=self.prefetch)
                self._thread = threading.Thread(
                    target=self._producer,
                    args=(self.epoch, self.step, self._queue, self._stop),
                    daemon=True,
                    name="WindowLoader-prefetch",
                )
                self._thread.start()
            batch, error = self._queue.get()
            if error is not None:
                self.close()
                raise error
        self.epoch, self.step = self._advance(self.epoch, self.step, self.steps_per_epoch)
        return batch

    def close(self) -> None:
        """Stops and joins the prefetch thread (the position is kept)."""
        if getattr(self, "_thread", None) is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self._queue = None

    def __enter__(self) -> WindowLoader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()
