"""Grain loader on the synthetic world: resumable state, disjoint host shards, bad examples
skipped and counted, global arrays on a mesh, and one worker-process run."""

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from veripo_jax.data.batching import BatchSpec
from veripo_jax.data.datasets import data_source
from veripo_jax.data.loader import Loader, LoaderConfig, make_dataset
from veripo_jax.data.synthetic.build import build_world
from veripo_jax.data.synthetic.world import WorldConfig
from veripo_jax.data.vision import VisionSettings

WORLD = WorldConfig(tokenizer_corpus_examples=200, tokenizer_vocab_size=600)
SMALL = VisionSettings(video_min_pixels=56 * 56, max_pixels=112 * 112,
                       image_min_pixels=56 * 56, image_max_pixels=112 * 112)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  return build_world(tmp_path_factory.mktemp("world"), seed=3,
                     split_sizes={"train": 24, "heldout": 4}, world=WORLD)


def _config(world, **kw):
  batch = kw.pop("batch", BatchSpec(batch_size=4, patch_buckets=(256, 512, 1024)))
  return LoaderConfig(tokenizer_dir=world.tokenizer_dir, vision=SMALL, batch=batch, seed=7, **kw)


def _same(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_restored_state_gives_identical_batches(world):
  source = data_source(world.dataset_dir, "train")
  loader = Loader(make_dataset(source, _config(world)))
  for _ in range(3):
    next(loader)
  state = loader.get_state()
  expected = [next(loader) for _ in range(4)]        # crosses an epoch boundary (24 / 4 = 6)
  resumed = Loader(make_dataset(source, _config(world)))
  resumed.set_state(state)
  for want in expected:
    _same(next(resumed), want)


def test_two_hosts_get_disjoint_covering_shards(world):
  source = data_source(world.dataset_dir, "train")
  config = _config(world, num_epochs=1,
                   batch=BatchSpec(batch_size=5, patch_buckets=(256, 512, 1024),
                                   drop_remainder=False))
  ids = []
  for host in range(2):
    loader = Loader(make_dataset(source, config, process_index=host, process_count=2))
    ids.append([i for b in loader for i, m in zip(b["id"], b["example_mask"]) if m])
  assert len(ids[0]) == len(ids[1]) == 12
  assert not set(ids[0]) & set(ids[1])
  assert set(ids[0]) | set(ids[1]) == {f"train-{i}" for i in range(24)}


class _Corrupted:
  """The world's records with some media broken, as a random-access source."""

  def __init__(self, source, damage):
    self.source, self.damage = source, damage

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    record = dict(self.source[i])
    if i in self.damage:
      record["data_type"] = b"video"
      record["media"] = self.damage[i]
    return record


def test_bad_examples_are_skipped_and_counted(world):
  source = data_source(world.dataset_dir, "train")
  clip = next(source[i]["media"] for i in range(len(source))
              if source[i]["data_type"] == b"video")
  damage = {0: b"\x00not a video" * 50, 5: clip[: len(clip) // 2], 9: b""}
  config = _config(world, num_epochs=1, shuffle=False,
                   batch=BatchSpec(batch_size=3, patch_buckets=(256, 512, 1024)))
  loader = Loader(make_dataset(_Corrupted(source, damage), config))
  seen = [i for batch in loader for i in batch["id"]]
  assert len(seen) == 21
  assert not {source[i]["id"].decode() for i in damage} & set(seen)
  assert sum(loader.skipped.values()) == 3
  assert loader.skipped["empty_media"] == 1
  assert loader.get_state()["skipped"] == loader.skipped


def test_global_arrays_on_mesh(world):
  mesh = jax.make_mesh((4, 2), ("data", "tensor"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)
  source = data_source(world.dataset_dir, "train")
  config = _config(world, batch=BatchSpec(batch_size=4, patch_buckets=(256, 512, 1024)))
  local = next(Loader(make_dataset(source, config)))
  batch = next(Loader(make_dataset(source, config), mesh=mesh))
  assert isinstance(batch["input_ids"], jax.Array)
  assert batch["input_ids"].sharding.spec == jax.sharding.PartitionSpec(("data",))
  assert batch["position_ids"].sharding.spec == jax.sharding.PartitionSpec(None, ("data",))
  for name in ("input_ids", "attention_mask", "position_ids", "pixel_values_videos"):
    np.testing.assert_array_equal(np.asarray(batch[name]), local[name])
  assert isinstance(batch["video_grid_thw"], np.ndarray)


def test_worker_process_matches_in_process(world):
  source = data_source(world.dataset_dir, "train")
  want = next(Loader(make_dataset(source, _config(world))))
  loader = Loader(make_dataset(source, _config(world, num_workers=1)))
  try:
    _same(next(loader), want)
  finally:
    del loader


def test_state_round_trips_through_an_orbax_checkpoint(world, tmp_path):
  source = data_source(world.dataset_dir, "train")
  loader = Loader(make_dataset(source, _config(world)))
  next(loader)
  with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
    manager.save(1, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(loader.iterator)))
    manager.wait_until_finished()
    want = next(loader)
    resumed = Loader(make_dataset(source, _config(world)))
    manager.restore(1, args=ocp.args.Composite(
        data=grain.checkpoint.CheckpointRestore(resumed.iterator)))
  _same(next(resumed), want)
