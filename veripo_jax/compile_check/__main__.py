"""`python -m veripo_jax.compile_check --config=CONFIG --topology=v5p-128 [--json=OUT]`."""

from __future__ import annotations

import importlib.util
import os
import sys

os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")

import jax  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from veripo_jax.config_utils import ConfigError  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml-collections config file.",
                                          lock_config=True)
_TOPOLOGY = flags.DEFINE_string("topology", None, "Cloud TPU accelerator type, e.g. v5p-128.")
_JSON = flags.DEFINE_string("json", None, "Write the rows here as a JSON list.")
_HBM_GIB = flags.DEFINE_float("hbm_gib", None, "HBM per chip in GiB (default: the chip's).")
_STAGES = flags.DEFINE_list("stages", [], "Only these stages (default: all).")
_PROMPT_LENGTH = flags.DEFINE_integer(
    "prompt_length", None, "Prompt tokens (rounded up to a stage's prompt bucket; default: "
    "each stage's largest bucket, the worst case).")
_JUDGE_PRESET = flags.DEFINE_string(
    "judge_preset", None, "The judge's preset when its checkpoint is not here (default: the "
    "run's model.preset), e.g. 7b for a Qwen2.5-7B-Instruct judge.")
_MAX_FRAMES = flags.DEFINE_integer("max_frames", None, "Cap on each prompt video's frames "
                                   "(default: the stage's vision.max_frames).")


def _fail(message: str) -> None:
  print(f"compile_check: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


def main(argv) -> None:
  del argv
  # A CPU host with libtpu: host arrays stay on the CPU; the TPU is only compiled for.
  if not os.environ.get("JAX_PLATFORMS"):
    jax.config.update("jax_platforms", "cpu")
  from veripo_jax.compile_check import TopologyError, check, parse_topology, write_json
  if _CONFIG.value is None or not _TOPOLOGY.value:
    _fail("--config and --topology are required")
  try:
    topology = parse_topology(_TOPOLOGY.value)
  except TopologyError as e:
    _fail(str(e))
  if importlib.util.find_spec("libtpu") is None:
    _fail("libtpu is not installed: pip install -r requirements-tpu.txt")
  print(f"{topology.name}: {topology.chips} chips ({topology.topology_name}), "
        f"{topology.hosts} hosts, {topology.hbm_bytes / 1024**3:.2f} GiB HBM per chip; "
        "bytes per chip in GiB", flush=True)
  hbm = int(_HBM_GIB.value * 1024**3) if _HBM_GIB.value else None
  try:
    rows = check(_CONFIG.value, topology, hbm_bytes=hbm, stages=_STAGES.value,
                 prompt_length=_PROMPT_LENGTH.value, max_frames=_MAX_FRAMES.value,
                 judge_preset=_JUDGE_PRESET.value,
                 log=lambda line: print(line, flush=True))
  except (ConfigError, ValueError) as e:
    _fail(str(e))
  if _JSON.value:
    write_json(rows, _JSON.value)
  misfits = [f"{r.stage}/{r.program}" for r in rows if not r.fits]
  if misfits:
    print(f"does not fit in HBM: {', '.join(misfits)}", file=sys.stderr, flush=True)
    sys.exit(1)
  print(f"all {len(rows)} programs fit", flush=True)


if __name__ == "__main__":
  app.run(main)
