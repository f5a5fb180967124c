"""JAX's persistent compilation cache for a run: a resumed or repeated run reuses the compiled
programs instead of compiling them again (minutes for a 7B model on a TPU pod).

XLA checks a cached executable against the host before using it, so a cache shared by machines
of different kinds costs recompiles, never wrong code.
"""

from __future__ import annotations

import os

import jax

OFF = "off"


def resolve_cache_dir(setting: str, workdir: str) -> str | None:
  """`config.compilation_cache_dir`: "" = WORKDIR/compilation_cache, "off" = none, else the path
  (local or gs://)."""
  if setting == OFF:
    return None
  if not setting:
    return os.path.join(workdir, "compilation_cache")
  return setting if "://" in setting else os.path.abspath(os.path.expanduser(setting))


def enable_compilation_cache(setting: str, workdir: str) -> str | None:
  """Points JAX's persistent cache at the resolved directory; returns it (None when off).

  Process-wide: call once, before the first compilation, from the program's entry point.
  """
  path = resolve_cache_dir(setting, workdir)
  if path is not None:
    jax.config.update("jax_compilation_cache_dir", path)
  return path
