"""gRPC client of the judge server (JetStream's Orchestrator service), token ids in and out.

Light on purpose: gRPC and the generated protos only, no JetStream engine (no TensorFlow). Every
call has a deadline; a request that still fails after its retries is counted, and the verifier
falls back to its rule for it instead of stopping.
"""

from __future__ import annotations

import threading
import time
from concurrent import futures
from typing import Sequence

import grpc
from jetstream.core.proto import jetstream_pb2, jetstream_pb2_grpc

# Worth another try: the server is busy, restarting, or the call was cut off.
_RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
                        grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED,
                        grpc.StatusCode.CANCELLED})


class JudgeError(RuntimeError):
  """A request failed for good (after its retries, or refused as invalid)."""


class JudgeClient:
  """`num_requests`, `num_retries` and `num_failures` count calls for metrics (thread-safe)."""

  def __init__(self, address: str, *, timeout_s: float = 30.0, retries: int = 2,
               max_workers: int = 8, backoff_s: float = 0.2):
    if timeout_s <= 0 or retries < 0 or max_workers < 1:
      raise ValueError(f"need timeout_s > 0, retries >= 0, max_workers >= 1; got {timeout_s}, "
                       f"{retries}, {max_workers}")
    self.address = address
    self.timeout_s = timeout_s
    self.retries = retries
    self.backoff_s = backoff_s
    self.num_requests = self.num_retries = self.num_failures = 0
    self._lock = threading.Lock()
    self._channel = grpc.insecure_channel(address)
    self._stub = jetstream_pb2_grpc.OrchestratorStub(self._channel)
    self._pool = futures.ThreadPoolExecutor(max_workers, thread_name_prefix="judge-client")

  def _count(self, field: str) -> None:
    with self._lock:
      setattr(self, field, getattr(self, field) + 1)

  def generate_ids(self, prompt_ids: Sequence[int], max_tokens: int) -> list[int]:
    """The completion's token ids (stop token excluded); raises JudgeError on failure."""
    content = jetstream_pb2.DecodeRequest.TokenContent(token_ids=[int(t) for t in prompt_ids])
    request = jetstream_pb2.DecodeRequest(max_tokens=max_tokens, token_content=content)
    self._count("num_requests")
    for attempt in range(self.retries + 1):
      if attempt:
        self._count("num_retries")
        time.sleep(self.backoff_s * 2 ** (attempt - 1))
      try:
        ids: list[int] = []
        for response in self._stub.Decode(request, timeout=self.timeout_s):
          for sample in response.stream_content.samples:      # one: samples_per_slot is 1
            ids.extend(sample.token_ids)
        return ids
      except grpc.RpcError as e:
        error = e
        if e.code() not in _RETRYABLE:
          break
    self._count("num_failures")
    raise JudgeError(f"judge request to {self.address} failed: {error.code().name}: "
                     f"{error.details()}") from error

  def generate_many(self, prompts: Sequence[Sequence[int]], max_tokens: int
                    ) -> list[list[int] | None]:
    """Concurrent `generate_ids`; a request that fails gives None (never raises for it)."""
    def one(ids):
      try:
        return self.generate_ids(ids, max_tokens)
      except JudgeError:
        return None
    return list(self._pool.map(one, prompts))

  def healthy(self) -> bool:
    try:
      return self._stub.HealthCheck(jetstream_pb2.HealthCheckRequest(),
                                    timeout=min(self.timeout_s, 5.0)).is_live
    except grpc.RpcError:
      return False

  def close(self) -> None:
    self._pool.shutdown(wait=False, cancel_futures=True)
    self._channel.close()

  def __enter__(self) -> "JudgeClient":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
