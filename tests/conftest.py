"""Test setup: 8 simulated CPU devices, fp32 matmuls, parsed absl flags (Grain workers need them),
and one persistent compilation cache for the session: the whole-loop tests run the same stage
programs several times (a run, its resumed twin, another config of the same model), and compile
each only once.
"""

import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
from absl import flags  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
_COMPILATION_CACHE = tempfile.mkdtemp(prefix="veripo_test_xla_cache_")
jax.config.update("jax_compilation_cache_dir", _COMPILATION_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
flags.FLAGS.mark_as_parsed()

import pytest  # noqa: E402


def pytest_unconfigure(config):
  del config
  shutil.rmtree(_COMPILATION_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory):
  """A random tiny transformers Qwen2.5-VL (fp32) and the directory it was saved to."""
  from hf_reference import build_hf_model, tiny_hf_config
  model = build_hf_model(tiny_hf_config())
  path = tmp_path_factory.mktemp("tiny_hf")
  model.save_pretrained(path)
  return model, path


@pytest.fixture(scope="session")
def tiny_model(tiny_hf):
  """The port of `tiny_hf`, loaded from its checkpoint, in the default (legacy) rope mode."""
  from veripo_jax.models.qwen2_5_vl import load_hf_checkpoint
  return load_hf_checkpoint(tiny_hf[1])


@pytest.fixture(scope="session")
def tiny_model_hf5(tiny_hf):
  from veripo_jax.models.qwen2_5_vl import load_hf_checkpoint
  return load_hf_checkpoint(tiny_hf[1], rope_mode="hf5")
