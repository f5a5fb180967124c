"""An extension from outside the package: a stage kind, registered by name with its config
dataclass. A config then names it in `kind` like a built-in one, and `plan` checks it."""

import dataclasses

from veripo_jax.data.datasets import data_source
from veripo_jax.data.loader import as_text
from veripo_jax.rl import stage_kinds
from veripo_jax.rl.stage import DataConfig, Stage

KIND = "count_examples"


@dataclasses.dataclass(frozen=True)
class CountConfig:
  data: DataConfig = DataConfig(split="train")
  label: str = ""


class CountExamples(Stage):
  """Counts a split's examples by data type; needs no policy."""
  kind = KIND
  uses_policy = False
  hands_off = False

  def run(self, model) -> dict:
    source = data_source(self.ctx.data_dir(self.cfg.data), self.cfg.data.split)
    counts = {}
    for i in range(len(source)):
      kind = as_text(source[i]["data_type"])
      counts[kind] = counts.get(kind, 0) + 1
    return self.finish(None, {"label": self.cfg.label, "counts": counts}, export=False)


def register() -> None:
  stage_kinds.register_stage_kind(KIND, CountConfig, CountExamples)


def unregister() -> None:
  del stage_kinds.STAGE_KINDS[KIND]
