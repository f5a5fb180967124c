"""What every training stage shares: the run context, data loaders, checkpoints, stage hand-off.

A stage lives in `WORKDIR/stages/<name>/`: `checkpoints/` (Orbax, keep-last-N), its stored
rollouts or pairs, `policy/` (the Hugging Face export at the end) and `done.json`. A re-run skips
done stages, loads the last done stage's policy, and resumes the running stage from its newest
checkpoint. A SIGTERM makes the running stage save and exit cleanly (`Preempted`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from veripo_jax.data.batching import BatchSpec
from veripo_jax.data.datasets import data_source
from veripo_jax.data.loader import Loader, LoaderConfig, make_dataset
from veripo_jax.data.prompts import get_templates
from veripo_jax.data.vision import VisionSettings
from veripo_jax.fileio import write_json_atomic
from veripo_jax.models import CausalLM, family_of
from veripo_jax.parallel.sharding import DEFAULT_RULES
from veripo_jax.rl import artifacts
from veripo_jax.rl.sequences import SequenceBuilder
from veripo_jax.train.checkpointing import Checkpointer
from veripo_jax.train.learner import Learner
from veripo_jax.train.metrics import MetricsWriter, progress
from veripo_jax.train.preemption import PreemptionGuard


class Preempted(Exception):
  """Raised after a stage saved its state because a stop (SIGTERM) was requested."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Which split a stage reads and how it is batched; `batch_size` counts prompts per host.

  `dataset_dir` "" reads the run's `config.data.dataset_dir`; a stage names another built dataset
  when its data has another format (e.g. the evaluation benchmarks) or lives elsewhere.
  """
  dataset_dir: str = ""
  split: str = "train"
  batch_size: int = 8
  template: str = "video_r1_think"
  prompt_buckets: tuple[int, ...] = (128, 256, 512, 1024, 2048, 4096, 8192, 16384)
  response_buckets: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048, 4096)
  patch_buckets: tuple[int, ...] = (1024, 2048, 4096, 8192, 16384, 32768, 65536)
  vision: VisionSettings = VisionSettings()
  shuffle: bool = True
  num_epochs: int | None = None
  num_workers: int = 0
  seed: int = 0


@dataclasses.dataclass
class RunContext:
  """Run-level objects every stage uses."""
  workdir: str
  mesh: Mesh
  model_config: Any            # the model family's config
  tokenizer: Any
  tokenizer_dir: str
  dataset_dir: str
  writer: MetricsWriter
  guard: PreemptionGuard
  rope_mode: str = "legacy"
  rules: tuple = DEFAULT_RULES
  seed: int = 0

  def stage_dir(self, name: str) -> str:
    return artifacts.stage_dir(self.workdir, name)

  def policy_dir(self, name: str) -> str:
    """Where stage `name` exports its policy (a Hugging Face checkpoint)."""
    return artifacts.policy_dir(self.workdir, name)

  def data_dir(self, data: DataConfig) -> str:
    """The dataset directory a stage's `data` reads: its own, else the run's."""
    return data.dataset_dir or self.dataset_dir

  def dataset_ref(self, data: DataConfig) -> dict[str, str]:
    """{"dataset_dir", "split"} of a stage's data as artifacts record it: a directory inside
    the workdir relative to it (the workdir stays portable), any other absolute."""
    path = os.path.abspath(self.data_dir(data))
    inside = os.path.relpath(path, os.path.abspath(self.workdir))
    portable = path if inside == os.pardir or inside.startswith(os.pardir + os.sep) else inside
    return {"dataset_dir": portable, "split": data.split}

  def resolve_dataset_dir(self, recorded: str) -> str:
    """A recorded `dataset_dir` (see `dataset_ref`) as a path to open."""
    return os.path.join(self.workdir, recorded)

  def loader_config(self, data: DataConfig, *, with_response: bool = False,
                    drop_remainder: bool = True) -> LoaderConfig:
    spec = BatchSpec(batch_size=data.batch_size, prompt_buckets=data.prompt_buckets,
                     response_buckets=data.response_buckets, patch_buckets=data.patch_buckets,
                     with_response=with_response, drop_remainder=drop_remainder)
    return LoaderConfig(
        tokenizer_dir=self.tokenizer_dir, templates=get_templates(data.template),
        vision=data.vision, batch=spec,
        tokens_per_second=self.model_config.vision.tokens_per_second,
        rope_mode=self.rope_mode, seed=data.seed, shuffle=data.shuffle,
        num_epochs=data.num_epochs, num_workers=data.num_workers)

  def loader(self, data: DataConfig, *, with_response: bool = False,
             drop_remainder: bool = True, exclude: Sequence[int] = ()) -> Loader:
    v = self.model_config.vision
    return Loader(make_dataset(
        data_source(self.data_dir(data), data.split),
        self.loader_config(data, with_response=with_response, drop_remainder=drop_remainder),
        merge_size=v.spatial_merge_size, patch_dim=v.patch_dim,
        gather_hosts=jax.process_count() > 1, exclude=exclude))

  @property
  def eos_token_ids(self) -> tuple[int, ...]:
    return (self.model_config.eos_token_id,)


def sequence_builder(ctx: RunContext, learner: Learner, prompts: dict,
                     data: DataConfig, branches: int = 1,
                     packed_width: int | None = None) -> SequenceBuilder:
  """A batch's sequence builder: vision features shared across micro-batches when the tower is
  frozen, and responses and vision inputs padded to the data's buckets (few compiled shapes);
  `branches` responses per prompt share one row (`rl.sequences`)."""
  frozen_vision = not learner.trains(r"^visual\.")
  return SequenceBuilder(ctx.model_config, prompts, response_buckets=data.response_buckets,
                         rope_mode=ctx.rope_mode, learner=learner if frozen_vision else None,
                         patch_buckets=data.patch_buckets, branches=branches,
                         packed_width=packed_width)


class Stage:
  """Checkpoint/resume/hand-off plumbing around one stage's training loop."""

  kind = "stage"
  uses_policy = True    # run() takes the current policy (else None)
  hands_off = True      # its exported policy becomes the next stage's policy

  def __init__(self, ctx: RunContext, name: str, cfg: Any = None):
    """`cfg` is the kind's config dataclass (its `keep_checkpoints`, if any, bounds the train
    states kept on disk)."""
    self.ctx = ctx
    self.name = name
    self.cfg = cfg
    keep_checkpoints = getattr(cfg, "keep_checkpoints", 2)
    self.dir = ctx.stage_dir(name)
    self.checkpointer = Checkpointer(os.path.join(self.dir, "checkpoints"),
                                     keep=keep_checkpoints)
    # The loop builds a stage right before running it; done.json's `wall_s` counts from here
    # (a resumed stage: this process's part only), which the report shows as its wall time.
    self.started = time.perf_counter()

  @property
  def done_path(self) -> str:
    return os.path.join(self.dir, artifacts.DONE_FILE)

  @property
  def policy_dir(self) -> str:
    return self.ctx.policy_dir(self.name)

  def is_done(self) -> bool:
    return os.path.exists(self.done_path)

  def summary(self) -> dict:
    with open(self.done_path, encoding="utf-8") as f:
      return json.load(f)

  def restore(self, learner: Learner) -> dict | None:
    """Restores the newest checkpoint into `learner`; returns its extras (None: fresh start)."""
    restored = self.checkpointer.restore(None, learner.abstract_state())
    if restored is None:
      self.ctx.writer.rewind(self.name, -1)     # lines of an earlier, unfinished attempt
      return None
    learner.state, extras = restored
    self.ctx.writer.rewind(self.name, int(learner.state.step))
    logging.info("%s: resumed at optimizer step %d", self.name, int(learner.state.step))
    return extras

  def save(self, learner: Learner, extras: dict, *, force: bool = False) -> None:
    self.checkpointer.save(int(learner.state.step), learner.state, extras, force=force)

  def stop_if_requested(self, learner: Learner, extras: dict) -> None:
    """On a stop request: save now, wait for the write, and raise `Preempted`."""
    if self.ctx.guard.should_stop():
      self.save(learner, extras, force=True)
      self.checkpointer.wait()
      raise Preempted(f"{self.name}: stopped at optimizer step {int(learner.state.step)}")

  def run_steps(self, learner: Learner, loader: Loader, total: int, save_every: int,
                step_fn: Callable[[dict], dict],
                samples: Callable[[dict], int] | None = None) -> dict:
    """One optimizer step per loader batch up to `total` (SFT, DPO): metrics, periodic saves
    and stops. `step_fn(batch)` runs the step and returns its metrics; returns the last ones.
    `samples(batch)` counts a batch's samples for `time/sample_s` (default: its examples)."""
    start, t0, metrics = int(learner.state.step), time.perf_counter(), {}
    for step in progress(range(start, total), total=total - start, desc=self.name):
      batch = next(loader)
      metrics = {f"{self.kind}/{k}": v for k, v in step_fn(batch).items()}
      count = (samples(batch) if samples is not None
               else int(np.sum(batch["example_mask"])))
      metrics["time/sample_s"] = (time.perf_counter() - t0) / max(1, count)
      self.ctx.writer.write(self.name, step + 1, metrics)
      t0 = time.perf_counter()
      extras = {"loader": loader.get_state()}
      if (step + 1) % save_every == 0:
        self.save(learner, extras)
      if step + 1 < total:
        self.stop_if_requested(learner, extras)
    return metrics

  def finish(self, model: CausalLM, summary: dict, *, export: bool = True) -> dict:
    """Exports the policy (Hugging Face layout) and marks the stage done, atomically, with the
    stage's wall time in seconds (`wall_s`, export included)."""
    self.checkpointer.wait()
    if export:
      family_of(model.config).save(model, self.policy_dir)
    summary = {"stage": self.name, "kind": self.kind, **summary,
               "wall_s": time.perf_counter() - self.started}
    if jax.process_index() == 0:
      write_json_atomic(self.done_path, summary)
    if jax.process_count() > 1:            # the next stage reads what process 0 wrote
      multihost_utils.sync_global_devices(f"veripo_stage_done_{self.name}")
    self.checkpointer.close()
    return summary
