"""Hugging Face safetensors checkpoints <-> the Flax NNX model, streamed tensor by tensor.

Loading never materialises the whole model on the host beyond its final buffers: the model is
built abstractly (`nnx.eval_shape`), then each tensor is read, converted to the target dtype and
layout, and placed into its sharding before the next one is read. Both key layouts are accepted:
the on-disk one (`visual.*`, `model.layers.*`) and transformers 5.x in-memory names
(`model.visual.*`, `model.language_model.*`). Saving writes the on-disk layout. A text-only
Qwen2 / Qwen2.5 checkpoint (Qwen2ForCausalLM) is the same layout without `visual.*`. A model
with scanned (stacked) decoder layers reads and writes the same per-layer tensors, one layer's
slice at a time.
"""

from __future__ import annotations

import json
import os
from typing import Iterator

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from safetensors.numpy import save_file

from veripo_jax.fileio import replace_dir, temp_dir_beside
from veripo_jax.models.qwen2_5_vl.config import Qwen25VLConfig, from_hf_config
from veripo_jax.models.qwen2_5_vl.model import Qwen25VL
from veripo_jax.parallel.sharding import DEFAULT_RULES, LogicalRules, state_shardings

Path = tuple[str | int, ...]

# Dotted-name fragments that differ between the HF module tree and ours.
_RENAMES = (("visual.patch_embed.proj.", "visual.patch_embed."),
            ("visual.merger.mlp.0.", "visual.merger.fc1."),
            ("visual.merger.mlp.2.", "visual.merger.fc2."))
_NORMS = ("norm1", "norm2", "ln_q", "input_layernorm", "post_attention_layernorm", "norm")


def canonical_key(key: str) -> str:
  """transformers 5.x in-memory names -> the on-disk (legacy) names."""
  if key.startswith("model.visual."):
    return key[len("model."):]
  if key.startswith("model.language_model."):
    return "model." + key[len("model.language_model."):]
  return key


def hf_key_to_path(key: str) -> Path:
  """On-disk HF tensor name -> path in the model's state, e.g. ('layers', 0, 'mlp', ...)."""
  name = key
  for hf, ours in _RENAMES:
    name = name.replace(hf, ours)
  if name.startswith("model."):
    name = name[len("model."):]
  parts: list[str | int] = [int(p) if p.isdigit() else p for p in name.split(".")]
  if parts[-1] == "weight":
    owner = parts[-2]
    parts[-1] = ("scale" if owner in _NORMS else
                 "embedding" if owner == "embed_tokens" else "kernel")
  return tuple(parts)


def path_to_hf_key(path: Path) -> str:
  parts = [str(p) for p in path]
  if parts[-1] in ("scale", "embedding", "kernel"):
    parts[-1] = "weight"
  name = ".".join(parts)
  if parts[0] not in ("visual", "lm_head"):
    name = "model." + name
  for hf, ours in _RENAMES:
    name = name.replace(ours, hf)
  return name


def _to_flax(path: Path, tensor: np.ndarray) -> np.ndarray:
  if path[-2:] == ("patch_embed", "kernel"):
    return tensor.reshape(tensor.shape[0], -1).T     # Conv3d (out, C, T, P, P) -> (C*T*P*P, out)
  if path[-1] == "kernel":
    return tensor.T
  return tensor


def _to_hf(path: Path, array: np.ndarray, cfg: Qwen25VLConfig) -> np.ndarray:
  if path[-2:] == ("patch_embed", "kernel"):
    v = cfg.vision
    return np.ascontiguousarray(array.T).reshape(
        array.shape[1], v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)
  if path[-1] == "kernel":
    return np.ascontiguousarray(array.T)
  return array


# -------------------------------------------------------------------------------------------------
# Loading.

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
           "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
           "BOOL": np.bool_}


class SafetensorsReader:
  """Reads one tensor at a time with plain file reads.

  Unlike a memory map, nothing of the file stays resident after a tensor is converted, so
  peak host memory while loading is the model's own buffers plus about one tensor.
  """

  def __init__(self, path: str):
    self.path = path
    with open(path, "rb") as f:
      header_len = int.from_bytes(f.read(8), "little")
      try:
        header = json.loads(f.read(header_len))
      except ValueError as e:
        raise ValueError(f"{path}: not a safetensors file ({e})") from e
    header.pop("__metadata__", None)
    self.header, self.data_start = header, 8 + header_len

  def keys(self) -> list[str]:
    return list(self.header)

  def get(self, key: str) -> np.ndarray:
    info = self.header[key]
    if info["dtype"] not in _DTYPES:
      raise ValueError(f"{self.path}: tensor {key!r} has unsupported dtype {info['dtype']}")
    begin, end = info["data_offsets"]
    out = np.empty(info["shape"], _DTYPES[info["dtype"]])
    if out.nbytes != end - begin:
      raise ValueError(f"{self.path}: tensor {key!r} has {end - begin} bytes, expected "
                       f"{out.nbytes}")
    with open(self.path, "rb") as f:
      f.seek(self.data_start + begin)
      if f.readinto(memoryview(out.reshape(-1)).cast("B")) != out.nbytes:
        raise ValueError(f"{self.path}: file truncated inside tensor {key!r}")
    return out


def _checkpoint_files(path: str) -> Iterator[tuple[str, list[str] | None]]:
  """(file, keys the index assigns to it, or None without an index), in file order."""
  index = os.path.join(path, "model.safetensors.index.json")
  if os.path.exists(index):
    with open(index) as f:
      weight_map = json.load(f).get("weight_map")
    if not isinstance(weight_map, dict):
      raise ValueError(f"{index}: missing field 'weight_map'")
    by_file: dict[str, list[str]] = {}
    for key, fname in weight_map.items():
      by_file.setdefault(fname, []).append(key)
    for fname in sorted(by_file):
      full = os.path.join(path, fname)
      if not os.path.exists(full):
        raise FileNotFoundError(f"{index}: lists {fname}, which does not exist")
      yield full, by_file[fname]
    return
  files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
  if not files:
    raise FileNotFoundError(f"{path}: no *.safetensors files and no model.safetensors.index.json")
  for fname in files:
    yield os.path.join(path, fname), None


def _place(array: np.ndarray, sharding) -> jax.Array:
  """Puts a host array into `sharding`, touching only this process's shards (multi-host safe)."""
  return jax.make_array_from_callback(array.shape, sharding, lambda idx: array[idx])


def _layer_slice(target: Path, flat) -> tuple[Path, int] | None:
  """('layers', i, …) -> (('layers', …), i) when the model holds the layers stacked (scanned)."""
  if len(target) > 2 and target[0] == "layers" and isinstance(target[1], int):
    stacked = ("layers",) + target[2:]
    if stacked in flat and 0 <= target[1] < flat[stacked].get_value().shape[0]:
      return stacked, target[1]
  return None


def _slice_sharding(sharding):
  """The sharding of one slice along a stacked parameter's leading (layer) axis."""
  if isinstance(sharding, NamedSharding):
    return NamedSharding(sharding.mesh, P(*tuple(sharding.spec)[1:]))
  return sharding


class _StackedLoader:
  """Fills stacked (scanned-layer) parameters slice by slice, in place on device: each arriving
  layer tensor is placed on its own and written into slice i of its parameter's final buffer
  (allocated once, zero-filled, the update donating it), so the host never holds more than one
  layer's tensor and no unstacked copy of the layers exists on device either."""

  def __init__(self):
    self.arrays: dict[Path, jax.Array] = {}
    self.seen: set[tuple[Path, int]] = set()
    self._fns: dict = {}

  def _fn(self, kind: str, sharding):
    key = (kind, sharding)
    if key not in self._fns:
      if kind == "zeros":
        self._fns[key] = jax.jit(jnp.zeros, static_argnums=(0, 1), out_shardings=sharding)
      else:
        update = lambda stacked, value, i: jax.lax.dynamic_update_index_in_dim(
            stacked, value, i, 0)
        self._fns[key] = jax.jit(update, donate_argnums=0, out_shardings=sharding)
    return self._fns[key]

  def put(self, path: Path, layer: int, array: np.ndarray, like, sharding) -> None:
    if path not in self.arrays:
      self.arrays[path] = self._fn("zeros", sharding)(like.shape, like.dtype)
    value = _place(array, _slice_sharding(sharding))
    self.arrays[path] = self._fn("update", sharding)(self.arrays[path], value, np.int32(layer))
    self.seen.add((path, layer))


def load_hf_checkpoint(path: str | os.PathLike, dtype=jnp.float32, mesh: Mesh | None = None, *,
                       param_dtype=None, rules: LogicalRules = DEFAULT_RULES,
                       rope_mode: str = "legacy", attention_implementation: str | None = None,
                       scan_layers: bool = False,
                       remat_policy: str = "nothing_saveable") -> Qwen25VL:
  """Loads a local HF Qwen2.5-VL (or text-only Qwen2) directory into a Qwen25VL with compute
  dtype `dtype`.

  Parameters are stored in `param_dtype` (default: `dtype`) and placed by logical-axis `rules`
  on `mesh` (or on the default device). `scan_layers`: the decoder layers stacked (each
  `model.layers.{i}.…` tensor is written into slice i of its stacked parameter as it is read).
  """
  path = os.fspath(path)
  config = from_hf_config(path)
  param_dtype = dtype if param_dtype is None else param_dtype
  abstract = nnx.eval_shape(lambda: Qwen25VL(
      config, dtype=dtype, param_dtype=param_dtype, rope_mode=rope_mode,
      attention_implementation=attention_implementation, scan_layers=scan_layers,
      remat_policy=remat_policy))
  graphdef, state = nnx.split(abstract)
  flat = dict(nnx.to_flat_state(state))
  if mesh is not None:
    shardings = dict(nnx.to_flat_state(state_shardings(state, mesh, rules)))
    sharding_of = lambda p: shardings[p].get_value()
  else:
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    sharding_of = lambda p: device
  loaded: dict[Path, jax.Array] = {}
  stacked = _StackedLoader()
  for fname, keys in _checkpoint_files(path):
    reader = SafetensorsReader(fname)
    for key in reader.keys() if keys is None else keys:
      canon = canonical_key(key)
      if canon == "lm_head.weight" and config.tie_word_embeddings:
        continue                                  # tied: the embedding serves as lm_head
      target = hf_key_to_path(canon)
      layer_slice = None if target in flat else _layer_slice(target, flat)
      if target not in flat and layer_slice is None:
        raise ValueError(f"{fname}: unexpected tensor {key!r} (no such parameter in "
                         f"{'a tied' if config.tie_word_embeddings else 'this'} model)")
      like = (flat[target] if layer_slice is None else flat[layer_slice[0]]).get_value()
      if key not in reader.header:
        raise ValueError(f"{fname}: tensor {key!r} listed in the index is not in the file")
      array = _to_flax(target, reader.get(key))
      expected = like.shape if layer_slice is None else like.shape[1:]
      if array.shape != expected:
        raise ValueError(f"{fname}: tensor {key!r} has shape {array.shape} after conversion, "
                         f"model expects {expected}")
      array = array.astype(like.dtype, copy=False)
      if layer_slice is None:
        loaded[target] = _place(array, sharding_of(target))
      else:
        stacked.put(*layer_slice, array, like, sharding_of(layer_slice[0]))
      del array
  missing = []
  for p, var in flat.items():
    if p in loaded:
      continue
    if scan_layers and p[0] == "layers":            # stacked: the layers not read
      missing.extend(path_to_hf_key(("layers", i) + p[1:])
                     for i in range(var.get_value().shape[0]) if (p, i) not in stacked.seen)
    else:
      missing.append(path_to_hf_key(p))
  if missing:
    raise ValueError(f"{path}: missing tensors in checkpoint: {missing[:8]}"
                     f"{' ...' if len(missing) > 8 else ''} ({len(missing)} in all)")
  loaded.update(stacked.arrays)
  for p, var in flat.items():
    flat[p] = var.replace(loaded[p])
  return nnx.merge(graphdef, nnx.from_flat_state(list(flat.items())))


# -------------------------------------------------------------------------------------------------
# Saving.

def _host(array: jax.Array) -> np.ndarray:
  if not array.is_fully_addressable:
    from jax.experimental import multihost_utils
    array = multihost_utils.process_allgather(array, tiled=True)
  return np.asarray(jax.device_get(array))


class _Tensor:
  """One checkpoint tensor: a parameter, or slice `layer` of a stacked (scanned) parameter,
  sliced only when written."""

  def __init__(self, array: jax.Array, layer: int | None = None):
    self.array, self.layer = array, layer
    self.dtype = array.dtype
    self.size = array.size if layer is None else array.size // array.shape[0]

  def get(self) -> jax.Array:
    return self.array if self.layer is None else self.array[self.layer]


def _unstacked_params(model: Qwen25VL) -> list[tuple[Path, _Tensor]]:
  """The parameters in the order (and with the paths) of an unscanned model: a scanned model's
  stacked `layers.…` parameters become `layers.{i}.…`, layer by layer."""
  out: list[tuple[Path, _Tensor]] = []
  stacked: list[tuple[Path, jax.Array]] = []
  for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    if getattr(model, "scan_layers", False) and p[0] == "layers":
      stacked.append((p[1:], v.get_value()))
      continue
    if stacked and p[0] != "layers":          # the layer group ends: expand it here
      out.extend(_layer_tensors(stacked))
      stacked = []
    out.append((p, _Tensor(v.get_value())))
  return out + _layer_tensors(stacked)


def _layer_tensors(stacked: list[tuple[Path, jax.Array]]) -> list[tuple[Path, _Tensor]]:
  n = stacked[0][1].shape[0] if stacked else 0
  return [(("layers", i) + sub, _Tensor(arr, i)) for i in range(n) for sub, arr in stacked]


def save_hf_checkpoint(model: Qwen25VL, path: str | os.PathLike, *, dtype=None,
                       max_shard_bytes: int = 5 * 2**30) -> None:
  """Writes config.json + sharded safetensors (on-disk HF layout) that transformers loads
  (a text-only model as Qwen2ForCausalLM).

  `dtype` (default: the parameters' dtype) is the stored dtype. A scanned model's stacked
  layers are written slice by slice as `model.layers.{i}.…`, the files identical to those of
  the same model unscanned. Files are written to a temporary directory beside `path` and moved
  in at the end, so a crash leaves no partial checkpoint. Only process 0 writes.
  """
  path = os.fspath(path)
  cfg = model.config
  params = _unstacked_params(model)
  shards: list[list[tuple[Path, _Tensor]]] = [[]]
  size = 0
  for p, arr in params:
    nbytes = arr.size * np.dtype(dtype or arr.dtype).itemsize
    if shards[-1] and size + nbytes > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append((p, arr))
    size += nbytes
  write = jax.process_index() == 0
  tmp = temp_dir_beside(path) if write else None
  weight_map, total = {}, 0
  for i, shard in enumerate(shards):
    fname = ("model.safetensors" if len(shards) == 1 else
             f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors")
    tensors = {}
    for p, arr in shard:
      host = _host(arr.get())                # every process joins the gather
      host = host.astype(dtype) if dtype is not None else host
      key = path_to_hf_key(p)
      tensors[key] = _to_hf(p, host, cfg)
      weight_map[key] = fname
      total += host.nbytes
    if write:
      save_file(tensors, os.path.join(tmp, fname), metadata={"format": "pt"})
    del tensors
  if not write:
    return
  if len(shards) > 1:
    with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
      json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
  hf = cfg.to_hf_dict()
  stored = np.dtype(dtype or params[0][1].dtype)
  hf["torch_dtype"] = hf["dtype"] = (stored.name if stored.name in ("bfloat16", "float16")
                                     else "float32")
  with open(os.path.join(tmp, "config.json"), "w") as f:
    json.dump(hf, f, indent=2)
  replace_dir(tmp, path)

