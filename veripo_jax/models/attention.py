"""Attention kernels chosen by name, for any model family.

Names (a model's `attention_implementation`; `IMPLEMENTATIONS`):

  "xla"     `jax.nn.dot_product_attention`'s XLA path: the (B, heads, Tq, Tk) scores are formed in
            fp32, masked, soft-maxed in fp32. Runs everywhere; the reference the others are tested
            against.
  "splash"  Pallas splash attention (`jax.experimental.pallas.ops.tpu.splash_attention`), TPU only:
            blockwise online softmax, fully masked blocks skipped, scores never materialised.
  "cudnn"   cuDNN flash attention through `jax.nn.dot_product_attention(implementation="cudnn")`,
            NVIDIA GPUs only.
  "auto"    (and None) by platform: TPU -> splash, CUDA GPU -> cudnn, anything else -> xla.

"splash_interpret" is the splash kernels in Pallas interpret mode: the same kernel code run by the
XLA interpreter on any platform, slowly. It exists for the CPU parity tests; a run config should
not name it.

Masks (what `attention` accepts as `mask`):

  `SelfAttentionMask(valid, branch, causal)`  a decoder's self-attention: causal, real keys only
      and, for prompt-shared rows, a column of branch k > 0 sees branch 0 and branch k only.
      Its `dense()` is the boolean (B, 1, L, L) mask the XLA path uses.
  a boolean array broadcastable to (B, 1, Tq, Tk)  anything else; a (.., 1, 1, Tk) array is
      recognised as a key-padding mask (the same keys for every query).
  None  no mask.

Which kernel runs (`plan`):

  kind       mask                              splash                       cudnn
  ---------  --------------------------------  ---------------------------  ----------------------
  segments   SelfAttentionMask, no branch      CausalMask + segment ids     is_causal + mask
  branch     SelfAttentionMask with branch     dynamic per-row dense mask   is_causal + mask
  keys       (B, 1, 1, Tk) key padding         FullMask + segment ids       mask (full Tq, Tk)
  dense      any other (B, 1, Tq, Tk)          dynamic per-row dense mask   mask
  none       None                              FullMask (+ ids if padded)   none (mask if padded)

  Segment ids (query i sees key j iff their ids are equal, and the static mask allows it): a key
  is 1 if real, 0 if padding; a query is 1 once a real key is in its reach (causal: from the
  row's first real token on), else 0. That is exactly the dense mask on every query that sees a
  key. The branch mask is not an equivalence relation (branch-0 keys are seen by every branch),
  so it cannot be segment ids: splash takes it as a dynamic mask (the dense mask split into
  blocks at run time; empty blocks are still skipped), which costs reading the (L, L) booleans
  the XLA path also builds. cuDNN takes every mask as an additive bias (jax converts the
  boolean; it must span the full Tq and Tk, jax issue #28974), with is_causal for the decoder's
  masks so cuDNN skips the upper triangle.

  Falls back to XLA: fewer than `KERNEL_MIN_QUERIES` query rows (decode steps; small vision
  windows, where padding to a 128 block would cost more than the scores it saves), a per-head
  mask (heads dim > 1), and for cudnn a dtype other than bf16/fp16, or a head dim over 128 or
  not a multiple of 8 (jax's documented limits: bf16/fp16 only; head dim a multiple of 8 and
  <= 128, or <= 256 from Hopper on, where 128 is kept for simplicity).

Both kernels pad Tq and Tk to a multiple of 128 (splash's block granule; for cuDNN it keeps to
the even lengths a biased backward needs, and clear of the masked-backward NaNs reported for
lengths 64 mod 128 in cuDNN's SDPA backward, pytorch issue #196678). Padded keys are masked,
padded query rows dropped.

Fully masked query rows (no visible key: a left-padded prompt's padding in a prefill, an
all-padding vision segment). The XLA path gives them the mean of all values (uniform weights);
an online-softmax kernel would give 0/0, NaN in the forward and in every gradient it touches.
The kernels never see such a row: with segment ids it sees the padding keys (itself at least,
causally) or, for key padding, every key; in a dense mask it is given key 0. Only these rows'
outputs differ from XLA's, and they stay finite; in this package's masks they are padding
tokens, whose keys every real query masks and whose outputs no loss reads. On every other row
the kernels compute the same function as XLA (tests/test_attention.py).

Under `parallel.sharding.activation_sharding` the splash kernel runs in a `shard_map` over the
batch and head axes of the active mesh (a Pallas call is opaque to GSPMD, which would otherwise
gather its operands onto every device); cuDNN partitions itself by batch and heads.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from veripo_jax.parallel import sharding

log = logging.getLogger(__name__)

IMPLEMENTATIONS = ("auto", "xla", "splash", "cudnn")
INTERPRET = "splash_interpret"          # testing only: splash in Pallas interpret mode
KERNEL_MIN_QUERIES = 128                # fewer query rows than this: XLA
_BLOCK = 128                            # kernels' length granule
_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)
_CUDNN_MAX_HEAD_DIM = 128

Kind = Literal["segments", "branch", "keys", "dense", "none"]


# -------------------------------------------------------------------------------------------------
# Names.

def check_implementation(name: str | None) -> str:
  """The normalised implementation name ("auto" for None); ValueError naming the field."""
  name = "auto" if name is None else name
  if name not in IMPLEMENTATIONS + (INTERPRET,):
    raise ValueError(f"attention_implementation (the run config's model.attention) must be one "
                     f"of {list(IMPLEMENTATIONS)}, got {name!r}")
  return name


def resolve_implementation(name: str | None, platform: str | None = None) -> str:
  """"xla", "splash", "cudnn" or "splash_interpret" for `name` on `platform` (default: the
  default backend). "auto" picks by platform; an explicit kernel on a platform without it is a
  ValueError."""
  name = check_implementation(name)
  platform = jax.default_backend() if platform is None else platform
  if name == "auto":
    return {"tpu": "splash", "gpu": "cudnn", "cuda": "cudnn"}.get(platform, "xla")
  if name == "splash" and platform != "tpu":
    raise ValueError(f"attention_implementation 'splash' needs a TPU (platform {platform!r}); "
                     "use 'auto' or 'xla'")
  if name == "cudnn" and platform not in ("gpu", "cuda"):
    raise ValueError(f"attention_implementation 'cudnn' needs an NVIDIA GPU (platform "
                     f"{platform!r}); use 'auto' or 'xla'")
  return name


# -------------------------------------------------------------------------------------------------
# Masks.

@struct.dataclass
class SelfAttentionMask:
  """A decoder's self-attention mask, kept structured so kernels need not read a dense one.

  Query i sees key j iff j <= i (when `causal`), token j is real (`valid`) and, with `branch`
  set, branch[j] == 0 or branch[j] == branch[i] (prompt-shared rows: a response sees the shared
  prompt and itself only).
  """
  valid: jax.Array                          # (B, L) bool, False on padding
  branch: jax.Array | None = None           # (B, L) int32, 0 on the shared prefix
  causal: bool = struct.field(pytree_node=False, default=True)

  def dense(self) -> jax.Array:
    """(B, 1, L, L) bool: what the XLA path applies."""
    l = self.valid.shape[1]
    mask = jnp.broadcast_to(self.valid[:, None, :].astype(bool), (self.valid.shape[0], l, l))
    if self.causal:
      mask = mask & jnp.tril(jnp.ones((l, l), bool))[None]
    if self.branch is not None:
      keys = self.branch[:, None, :]
      mask = mask & ((keys == 0) | (keys == self.branch[:, :, None]))
    return mask[:, None]


def mask_kind(mask) -> Kind:
  if mask is None:
    return "none"
  if isinstance(mask, SelfAttentionMask):
    return "segments" if mask.branch is None else "branch"
  if mask.ndim == 4 and mask.shape[2] == 1:
    return "keys"
  return "dense"


def dense_mask(mask) -> jax.Array | None:
  return mask.dense() if isinstance(mask, SelfAttentionMask) else mask


# -------------------------------------------------------------------------------------------------
# Dispatch.

@dataclasses.dataclass(frozen=True)
class Plan:
  kernel: str        # "xla", "splash", "splash_interpret" or "cudnn"
  kind: Kind
  reason: str = ""   # why XLA when a kernel was asked for


def plan(implementation: str | None, q_shape, k_shape, dtype, mask,
         platform: str | None = None) -> Plan:
  """The kernel `attention` runs for these shapes (q (B, Tq, H, D), k (B, Tk, KV, D)), dtype
  and mask, and why it falls back to XLA when it does. Decides only; runs nothing."""
  kernel = resolve_implementation(implementation, platform)
  kind = mask_kind(mask)
  tq, head_dim = q_shape[1], q_shape[3]
  if kernel == "xla":
    return Plan("xla", kind)
  if isinstance(mask, SelfAttentionMask) and (tq != k_shape[1] or mask.valid.shape[1] != tq):
    raise ValueError(f"a SelfAttentionMask over {mask.valid.shape[1]} tokens given to attention "
                     f"of {tq} queries over {k_shape[1]} keys")
  if tq < KERNEL_MIN_QUERIES:
    return Plan("xla", kind, f"{tq} query rows < {KERNEL_MIN_QUERIES}")
  if kind in ("keys", "dense") and mask.ndim == 4 and mask.shape[1] != 1:
    return Plan("xla", kind, "per-head mask")
  if kernel == "cudnn":
    if jnp.dtype(dtype) not in [jnp.dtype(d) for d in _CUDNN_DTYPES]:
      return Plan("xla", kind, f"cudnn needs bf16/fp16, got {jnp.dtype(dtype).name}")
    if head_dim > _CUDNN_MAX_HEAD_DIM or head_dim % 8:
      return Plan("xla", kind, f"cudnn needs a head dim <= {_CUDNN_MAX_HEAD_DIM} and a multiple "
                               f"of 8, got {head_dim}")
  return Plan(kernel, kind)


_LOGGED: set[tuple[str, str]] = set()


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask=None,
              implementation: str | None = None) -> jax.Array:
  """softmax(q k^T / sqrt(D) + mask) v with q (B, Tq, H, D), k/v (B, Tk, KV, D), H % KV == 0.

  `mask`: a `SelfAttentionMask`, a boolean array broadcastable to (B, 1, Tq, Tk), or None.
  Scores and softmax are fp32 in every kernel. See the module docstring for which kernel runs
  and for fully masked rows.
  """
  p = plan(implementation, q.shape, k.shape, q.dtype, mask)
  if p.reason and (p.reason, p.kind) not in _LOGGED:
    _LOGGED.add((p.reason, p.kind))
    log.info("attention: %s mask on XLA (%s)", p.kind, p.reason)
  if p.kernel == "xla":
    return jax.nn.dot_product_attention(q, k, v, mask=dense_mask(mask), implementation="xla")
  if p.kernel == "cudnn":
    return _cudnn(q, k, v, mask, p.kind)
  return _splash(q, k, v, mask, p.kind, interpret=p.kernel == INTERPRET)


# -------------------------------------------------------------------------------------------------
# What both kernels see: lengths padded to the block granule, no fully masked row.

def _round(n: int) -> int:
  return -(-n // _BLOCK) * _BLOCK


def _pad(x: jax.Array, axis: int, to: int, value=0) -> jax.Array:
  if x.shape[axis] == to:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, to - x.shape[axis])
  return jnp.pad(x, widths, constant_values=value)


def _segment_ids(mask, kind: Kind, batch: int, tq: int, tk: int, tqp: int, tkp: int
                 ) -> tuple[jax.Array, jax.Array]:
  """(q ids (B, Tqp), kv ids (B, Tkp)) int32: query i sees key j iff the ids are equal (and the
  static causal/full mask allows it)."""
  if kind == "segments":
    # Keys: real 1, padding 0. Queries: 1 (see the real keys, as in the dense mask) once a real
    # key is in reach, i.e. from the row's first real token on when causal; before that (a
    # left-padded prompt's padding, whose dense row is empty) 0: they see padding, themselves
    # at least.
    valid = _pad(mask.valid.astype(bool), 1, tkp, False)
    reach = (jnp.cumsum(valid, axis=1) > 0) if mask.causal else jnp.any(valid, 1, keepdims=True)
    q = jnp.broadcast_to(reach, valid.shape)
    return q.astype(jnp.int32), valid.astype(jnp.int32)
  if kind == "none":
    keys = jnp.ones((batch, tk), bool)
  else:                                          # "keys": (B|1, 1, 1, Tk)
    keys = jnp.broadcast_to(mask.reshape(mask.shape[0], tk).astype(bool), (batch, tk))
  kv = _pad(keys.astype(jnp.int32), 1, tkp)
  # A row whose keys are all masked sees every key (all 0) instead of none.
  q = jnp.broadcast_to(jnp.any(keys, axis=1, keepdims=True).astype(jnp.int32), (batch, tqp))
  return q, kv


def _safe_dense(mask, kind: Kind, batch: int, tq: int, tk: int, tqp: int, tkp: int) -> jax.Array:
  """(B, Tqp, Tkp) bool with at least one visible key per row."""
  if kind in ("segments", "keys", "none"):
    q, kv = _segment_ids(mask, kind, batch, tq, tk, tqp, tkp)
    out = q[:, :, None] == kv[:, None, :]
    if kind == "segments" and mask.causal:
      out = out & jnp.tril(jnp.ones((tqp, tkp), bool))[None]
    return out
  # "branch" / "dense": the dense mask; a row with no visible key is given key 0.
  dense = jnp.broadcast_to(dense_mask(mask).astype(bool), (batch, 1, tq, tk))[:, 0]
  dense = _pad(_pad(dense, 1, tqp, False), 2, tkp, False)
  first = jnp.arange(tkp) == 0
  return dense | (~jnp.any(dense, axis=-1, keepdims=True) & first)


def _is_causal(mask, kind: Kind) -> bool:
  return kind in ("segments", "branch") and mask.causal


# -------------------------------------------------------------------------------------------------
# cuDNN.

def _cudnn(q, k, v, mask, kind: Kind) -> jax.Array:
  b, tq, _, _ = q.shape
  tk = k.shape[1]
  tqp, tkp = _round(tq), _round(tk)
  padded = (tqp, tkp) != (tq, tk)
  bias_mask = None
  if kind != "none" or padded:
    bias_mask = _safe_dense(mask, kind, b, tq, tk, tqp, tkp)[:, None]   # full (B, 1, Tq, Tk)
  out = jax.nn.dot_product_attention(
      _pad(q, 1, tqp), _pad(k, 1, tkp), _pad(v, 1, tkp), mask=bias_mask,
      is_causal=_is_causal(mask, kind), implementation="cudnn")
  return out[:, :tq]


# -------------------------------------------------------------------------------------------------
# Splash.

def _block_sizes(tq: int, tk: int):
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk

  def block(n):
    return next(b for b in (512, 256, 128) if n % b == 0)
  bq, bkv = block(tq), block(tk)
  return sk.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv, block_q_dkv=bq,
                       block_kv_dkv=bkv, block_kv_dkv_compute=bkv, block_q_dq=bq,
                       block_kv_dq=bkv)


def _static_kernel(causal: bool, heads: int, tq: int, tk: int, interpret: bool):
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
  # Made per trace, not cached: the kernel holds arrays made in the trace (the expensive part,
  # processing the numpy mask, is cached by splash itself).
  base = sm.CausalMask((tq, tk)) if causal else sm.FullMask((tq, tk))
  return sk.make_splash_mha(sm.MultiHeadMask([base] * heads), block_sizes=_block_sizes(tq, tk),
                            head_shards=1, q_seq_shards=1, interpret=interpret)


def _dynamic_kernel(mask: jax.Array, interpret: bool):
  """A splash kernel for one row's dense (1, Tq, Tk) mask (a traced array)."""
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
  kernel = sk.make_splash_mha(mask, block_sizes=_block_sizes(*mask.shape[1:]), head_shards=1,
                              q_seq_shards=1, interpret=interpret)
  # `make_splash_mha` turns the MaskInfo's `is_dynamic_mask` flag into an array, which is a
  # tracer when the kernel is made under vmap and then cannot be tested by `__call__`; it is
  # only a flag (a named scope, a sharding spec), so set it back to the Python bool.
  fix = lambda info: None if info is None else info._replace(is_dynamic_mask=True)
  return sk.SplashAttentionKernel(fix(kernel.fwd_mask_info), fix(kernel.dq_mask_info),
                                  fix(kernel.dkv_mask_info), **kernel.kwargs)


def _splash(q, k, v, mask, kind: Kind, *, interpret: bool) -> jax.Array:
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
  b, tq, h, d = q.shape
  tk, kv_heads = k.shape[1], k.shape[2]
  tqp, tkp = _round(tq), _round(tk)
  # Splash does not scale: 1/sqrt(D) goes into q (in fp32, rounded back to q's dtype; in bf16
  # that rounding is the logits' only departure from the XLA path, which scales fp32 scores).
  q = (q.astype(jnp.float32) * (1.0 / np.sqrt(d))).astype(q.dtype)
  q, k, v = _pad(q, 1, tqp), _pad(k, 1, tkp), _pad(v, 1, tkp)
  if kind in ("branch", "dense"):
    extras = (_safe_dense(mask, kind, b, tq, tk, tqp, tkp),)

    def rows(q, k, v, dense):
      def row(q, k, v, m):
        return _dynamic_kernel(m[None], interpret)(q, k, v)
      return jax.vmap(row)(q.swapaxes(1, 2), k.swapaxes(1, 2), v.swapaxes(1, 2),
                           dense).swapaxes(1, 2)
  else:
    extras = _segment_ids(mask, kind, b, tq, tk, tqp, tkp)
    causal = _is_causal(mask, kind)

    def rows(q, k, v, q_seg, kv_seg):
      kernel = _static_kernel(causal, q.shape[2], tqp, tkp, interpret)

      def row(q, k, v, qs, ks):
        return kernel(q, k, v, segment_ids=sk.SegmentIds(qs, ks))
      return jax.vmap(row)(q.swapaxes(1, 2), k.swapaxes(1, 2), v.swapaxes(1, 2),
                           q_seg, kv_seg).swapaxes(1, 2)
  out = _shard_over_mesh(rows, q, k, v, extras, kv_heads, h)
  return out[:, :tq]


def _shard_over_mesh(fn, q, k, v, extras, kv_heads: int, heads: int) -> jax.Array:
  """fn(q, k, v, *extras) in a shard_map over the batch and head axes of the active
  `activation_sharding` mesh (or directly, outside one); `extras` lead with the batch axis."""
  ctx = sharding._CONTEXT.get()
  if ctx is None:
    return fn(q, k, v, *extras)
  mesh, rules = ctx
  P = jax.sharding.PartitionSpec

  def spec(x, heads_axis):        # batch and heads split as the rules say; length, head_dim whole
    full = sharding.logical_to_spec(("batch", None, heads_axis, None), rules, x.shape, mesh)
    return P(full[0], None, full[2], None)
  q_spec, kv_spec = spec(q, "heads"), spec(k, "kv_heads")
  if kv_spec != q_spec:
    # The kv heads split differently from the q heads (a head count the tensor axis does not
    # divide): give every q head its own kv head so both split alike.
    k, v = (jnp.repeat(x, heads // kv_heads, axis=2) for x in (k, v))
    kv_spec = q_spec
  extra_specs = tuple(P(q_spec[0], *([None] * (x.ndim - 1))) for x in extras)
  return jax.shard_map(fn, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec) + extra_specs,
                       out_specs=q_spec, check_vma=False)(q, k, v, *extras)
