"""Grain pipeline: ArrayRecord source -> seeded shuffle -> per-host shard -> decode + preprocess
-> drop-and-count bad examples -> bucketed batches -> (optionally) global arrays on a mesh.

Decoding runs in Grain's reader threads or worker processes; dropping, counting and batching run
in the training process, so the skip counts are exact, exposed as `Loader.skipped`, and saved in
the iterator state (which goes into the training checkpoint and resumes identically).
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
from typing import Any, Callable, Mapping, Sequence

import grain
import jax
import numpy as np

from veripo_jax.data.batching import BatchSpec, Collator
from veripo_jax.data.errors import BadExampleError
from veripo_jax.data.prompts import PromptTemplates, get_templates
from veripo_jax.data.schema import EXAMPLE_FIELDS, PATCH_FIELDS, ROW_FIELDS
from veripo_jax.data.tokenization import PromptEncoder, SpecialIds, load_tokenizer
from veripo_jax.data.vision import VisionSettings, process_image, process_video
from veripo_jax.parallel.multihost import allgather_objects



@dataclasses.dataclass(frozen=True)
class LoaderConfig:
  tokenizer_dir: str
  templates: PromptTemplates = dataclasses.field(
      default_factory=lambda: get_templates("video_r1_think"))
  vision: VisionSettings = VisionSettings()
  batch: BatchSpec = BatchSpec()
  tokens_per_second: float = 2          # the model's vision.tokens_per_second
  rope_mode: str = "legacy"
  chat_template: str | None = None      # None: the tokenizer's, else the Qwen2-VL one
  seed: int = 0
  shuffle: bool = True
  num_epochs: int | None = None         # None: repeat forever (reshuffled every epoch)
  num_workers: int = 0                  # Grain worker processes for decoding
  read_threads: int = 2                 # decoding threads when num_workers == 0
  prefetch: int = 8                     # examples decoded ahead per reader


def as_text(value) -> str:
  """A stored string field (TFDS gives bytes) as text."""
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class ExampleProcessor(grain.transforms.Map):
  """Stored record -> model-ready example, or a `{"skipped": reason}` marker for bad media.

  The tokenizer is loaded lazily so the transform pickles cheaply into worker processes.
  """

  def __init__(self, config: LoaderConfig, merge_size: int):
    self._config = config
    self._merge_size = merge_size
    self._encoder = None

  def __getstate__(self):
    return {**self.__dict__, "_encoder": None}

  @property
  def encoder(self) -> PromptEncoder:
    if self._encoder is None:
      c = self._config
      self._encoder = PromptEncoder(load_tokenizer(c.tokenizer_dir), c.templates,
                                    self._merge_size, c.chat_template)
    return self._encoder

  def map(self, stored: Mapping[str, Any]) -> dict:
    record = {k: as_text(stored[k]) for k in ("id", "data_type", "problem_type", "problem",
                                             "answer", "reasoning", "task")}
    record["source_index"] = int(stored.get("source_index", -1))
    record["options"] = [as_text(o) for o in stored["options"]]
    try:
      return self._process(record, stored["media"])
    except BadExampleError as e:
      logging.warning("skipping example %s: %s", record["id"], e)
      return {"skipped": e.reason, "id": record["id"]}

  def _process(self, record: dict, media: bytes) -> dict:
    c, kind = self._config, record["data_type"]
    visual = None
    if kind == "video":
      visual = process_video(media, c.vision)
    elif kind == "image":
      visual = process_image(media, c.vision)
    prompt = self.encoder.prompt_ids(record, visual)
    if len(prompt) > c.batch.prompt_buckets[-1]:
      raise BadExampleError("too_long", f"prompt of {len(prompt)} tokens exceeds the largest "
                            f"prompt bucket {c.batch.prompt_buckets[-1]}")
    example = {k: record[k] for k in EXAMPLE_FIELDS}
    example["prompt_ids"] = prompt
    if c.batch.with_response:
      response = self.encoder.response_ids(record)
      if len(response) > c.batch.response_buckets[-1]:
        raise BadExampleError("too_long", f"response of {len(response)} tokens exceeds the "
                              f"largest response bucket {c.batch.response_buckets[-1]}")
      example["response_ids"] = response
    if visual is not None:
      example.update(pixel_values=visual.pixel_values, grid_thw=visual.grid_thw,
                     second_per_grid_t=np.float32(visual.second_per_grid_t or 0.0))
    return example


class _BatchIterator(grain.DatasetIterator):
  """Pulls examples until a batch is full, counting (not batching) skip markers."""

  def __init__(self, parent: grain.DatasetIterator, collate: Callable, batch_size: int,
               drop_remainder: bool):
    super().__init__(parent)
    self._collate = collate
    self._batch_size = batch_size
    self._drop_remainder = drop_remainder
    self.skipped: collections.Counter = collections.Counter()

  def __next__(self) -> dict:
    examples = []
    while len(examples) < self._batch_size:
      try:
        example = next(self._parent)
      except StopIteration:
        if examples and not self._drop_remainder:
          break
        raise
      if "skipped" in example:
        self.skipped[example["skipped"]] += 1
      else:
        examples.append(example)
    return self._collate(examples)

  def get_state(self) -> dict:
    return {"parent": self._parent.get_state(), "skipped": dict(self.skipped)}

  def set_state(self, state: dict) -> None:
    self._parent.set_state(state["parent"])
    self.skipped = collections.Counter(state["skipped"])


class BatchDataset(grain.IterDataset):
  """Grain stage: drop-and-count, then collate `batch_size` good examples."""

  def __init__(self, parent: grain.IterDataset, collate: Callable, spec: BatchSpec):
    super().__init__(parent)
    self._collate = collate
    self._spec = spec

  def __iter__(self) -> _BatchIterator:
    return _BatchIterator(self._parent.__iter__(), self._collate, self._spec.batch_size,
                          self._spec.drop_remainder)


class IndexedSubset(Sequence):
  """The rows of a random-access source minus `exclude`, each tagged with its index in the full
  source (`source_index`, which rollouts and pairs name). Picklable when the source is."""

  def __init__(self, source: Sequence, exclude: Sequence[int] = ()):
    self.source = source
    bad = [i for i in exclude if not 0 <= int(i) < len(source)]
    if bad:
      raise ValueError(f"excluded source indices {bad[:5]} are outside 0..{len(source) - 1}")
    self.keep = np.setdiff1d(np.arange(len(source)), np.asarray(list(exclude), np.int64))

  def __len__(self) -> int:
    return len(self.keep)

  def __getitem__(self, i: int) -> dict:
    index = int(self.keep[i])
    return {**self.source[index], "source_index": index}


class GatherHosts:
  """Collates the examples of all hosts into one global batch, identical on every host.

  RL steps build host-side index tables (vision segments, prompt copies) for the whole global
  batch; each host still reads and decodes only its own shard.
  """

  def __init__(self, collate: Callable):
    self._collate = collate

  def __call__(self, examples: list[dict]) -> dict:
    # Interleaved (host 0's first, host 1's first, ...): host h reads shuffled positions
    # h, h + H, ..., so the global batch is the one a single process would read.
    hosts = allgather_objects(examples)
    return self._collate([e for row in itertools.zip_longest(*hosts) for e in row
                          if e is not None])


def collator(config: LoaderConfig, merge_size: int, patch_dim: int) -> Collator:
  ids = SpecialIds.from_tokenizer(load_tokenizer(config.tokenizer_dir))
  return Collator(config.batch, ids, patch_dim, merge_size, config.tokens_per_second,
                  config.rope_mode)


def batch_pipeline(ds: grain.MapDataset, transform: grain.transforms.Map, collate: Callable,
                   config: LoaderConfig, *, process_index: int | None = None,
                   process_count: int | None = None, gather_hosts: bool = False
                   ) -> BatchDataset:
  """Seeded shuffle -> repeat -> per-host shard -> `transform` in readers (or workers) ->
  drop-and-count -> `collate` batches: the tail every loader of examples shares.

  Every host shuffles the full index space with the same seed, then keeps every
  `process_count`-th element from `process_index`: disjoint shards that cover the data.
  With `gather_hosts`, each batch holds every host's examples (batch_size per host).
  """
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  if config.shuffle:
    ds = ds.seed(config.seed).shuffle()
  ds = ds.repeat(config.num_epochs)[index::count].map(transform)
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=config.read_threads,
                                            prefetch_buffer_size=config.prefetch))
  if config.num_workers:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.num_workers))
  return BatchDataset(it, GatherHosts(collate) if gather_hosts else collate, config.batch)


def make_dataset(source: Sequence, config: LoaderConfig, *, merge_size: int = 2,
                 patch_dim: int = 1176, process_index: int | None = None,
                 process_count: int | None = None, gather_hosts: bool = False,
                 exclude: Sequence[int] = ()) -> BatchDataset:
  """The whole pipeline over a dataset split as one Grain `IterDataset` of numpy batches;
  `exclude` drops source rows by index (the easy prompts discarded between VerIPO iterations)."""
  return batch_pipeline(grain.MapDataset.source(IndexedSubset(source, exclude)),
                        ExampleProcessor(config, merge_size),
                        collator(config, merge_size, patch_dim), config,
                        process_index=process_index, process_count=process_count,
                        gather_hosts=gather_hosts)


def to_global(batch: Mapping[str, Any], mesh: jax.sharding.Mesh,
              data_axes: Sequence[str] = ("data", "fsdp")) -> dict:
  """Host-local numpy batch -> global jax arrays, rows split over the mesh's data axes.

  Grids and string metadata stay host-side numpy (they steer host-side index computations).
  Every host must produce the same shapes (the same buckets) in multi-host runs.
  """
  axes = tuple(a for a in data_axes if a in mesh.axis_names)
  spec = jax.sharding.PartitionSpec(axes or None)
  pos_spec = jax.sharding.PartitionSpec(None, axes or None)
  ways = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
  out = dict(batch)
  for name, value in batch.items():
    if name not in ROW_FIELDS + PATCH_FIELDS and name != "position_ids":
      continue
    rows = value.shape[1] if name == "position_ids" else value.shape[0]
    if (rows * jax.process_count()) % ways:
      raise ValueError(f"batch field {name!r} has {rows} rows per host, not divisible over the "
                       f"{ways}-way data axes {axes}; adjust batch_size or the buckets")
    sharding = jax.sharding.NamedSharding(mesh, pos_spec if name == "position_ids" else spec)
    out[name] = jax.make_array_from_process_local_data(sharding, value)
  return out


class Loader:
  """Iterator over batches with checkpointable state and skip counts."""

  def __init__(self, dataset: BatchDataset, mesh: jax.sharding.Mesh | None = None,
               data_axes: Sequence[str] = ("data", "fsdp")):
    self.iterator: _BatchIterator = iter(dataset)
    self._mesh = mesh
    self._data_axes = tuple(data_axes)

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    batch = next(self.iterator)
    return batch if self._mesh is None else to_global(batch, self._mesh, self._data_axes)

  @property
  def skipped(self) -> dict[str, int]:
    """Bad examples dropped so far, by reason (for metrics and the run report)."""
    return dict(self.iterator.skipped)

  def get_state(self) -> dict:
    return self.iterator.get_state()

  def set_state(self, state: dict) -> None:
    self.iterator.set_state(state)
