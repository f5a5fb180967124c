"""ml-collections sections -> typed, frozen dataclasses, with unknown fields named in the error."""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import typing
from typing import Any, Iterable, Mapping, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
  """A config that cannot run; the message names the field (the CLI prints it in one line)."""


def closest(name: Any, choices: Iterable[Any]) -> str:
  """' (did you mean X?)' for the choice closest to `name`, or ''."""
  match = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1)
  return f" (did you mean {match[0]!r}?)" if match else ""


def reject_unknown(given: Iterable[str], known: Iterable[str], where: str) -> None:
  """A config error naming the fields of `given` not in `known`, the closest known name, and
  the known ones."""
  known = sorted(known)
  unknown = sorted(set(given) - set(known))
  if unknown:
    raise ConfigError(f"{where}: unknown field(s) {unknown}{closest(unknown[0], known)}; "
                      f"known: {known}")


def from_config(cls: type[T], cfg: Mapping[str, Any] | None, where: str) -> T:
  """Builds dataclass `cls` from a config mapping; nested dataclass fields recurse.

  Tuples in the config stay tuples, lists become tuples (frozen dataclasses must hash: they are
  static jit arguments). Missing fields keep the dataclass default.
  """
  if cfg is None:
    return cls()
  cfg = dict(cfg.items()) if hasattr(cfg, "items") else dict(cfg)
  fields = {f.name: f for f in dataclasses.fields(cls)}
  reject_unknown(cfg, fields, where)
  hints = typing.get_type_hints(cls)
  kwargs = {}
  for name, value in cfg.items():
    nested = _dataclass_type(hints.get(name))
    if nested is not None and value is not None and not dataclasses.is_dataclass(value):
      value = from_config(nested, value, f"{where}.{name}")
    elif isinstance(value, list):
      value = tuple(value)
    kwargs[name] = value
  try:
    return cls(**kwargs)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"{where}: {e}") from e


def _dataclass_type(hint) -> type | None:
  if dataclasses.is_dataclass(hint):
    return hint
  for arg in typing.get_args(hint):
    if dataclasses.is_dataclass(arg):
      return arg
  return None


def load_config_file(path: str, arg: str | None = None):
  """`get_config(arg)` of an ml-collections config file, for programmatic runs and tests."""
  spec = importlib.util.spec_from_file_location(f"veripo_config_{abs(hash(path))}", path)
  if spec is None or spec.loader is None:
    raise FileNotFoundError(f"{path}: not a Python config file")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config() if arg is None else module.get_config(arg)
