"""The judge server: JetStream's orchestrator behind a gRPC server bound to loopback by default.

    python -m veripo_jax.serving.server --checkpoint=DIR --port=N [--host=127.0.0.1]

JetStream 0.2.2's own `server_lib` binds every interface and cannot be told otherwise, so this
module assembles the same pieces (Driver + LLMOrchestrator servicer on a grpc.aio server) itself.
Requests are validated before they reach the orchestrator, whose threads kill the whole process
on any exception. SIGTERM / SIGINT stop it cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import threading
from concurrent import futures

import grpc
import jax.numpy as jnp

from veripo_jax.serving.compat import failed_thread, jetstream
from veripo_jax.serving.engine import QwenEngine

_js = jetstream()
_log = logging.getLogger(__name__)


class _Servicer(_js.orchestrator.LLMOrchestrator):
  """Refuses what would crash an orchestrator thread: text content, bad ids, max_tokens < 1."""

  def __init__(self, driver, engine: QwenEngine):
    super().__init__(driver=driver)
    self._engine = engine

  async def Decode(self, request, context=None):  # noqa: N802 (gRPC method name)
    failed = failed_thread(self._driver)
    if failed is not None:       # fail fast: the client falls back instead of timing out
      await context.abort(grpc.StatusCode.UNAVAILABLE,
                          f"judge engine thread {failed.name} failed: {failed.error!r}")
    if request.WhichOneof("content") != "token_content":
      problem = "send token ids (token_content): this server does not tokenize"
    elif request.max_tokens < 1:
      problem = f"max_tokens must be >= 1, got {request.max_tokens}"
    else:
      problem = self._engine.prompt_problem(request.token_content.token_ids)
    if problem is not None:
      await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
    async for response in super().Decode(request, context):
      yield response

  async def HealthCheck(self, request, context=None):  # noqa: N802
    response = await super().HealthCheck(request, context)
    response.is_live = response.is_live and failed_thread(self._driver) is None
    return response


class JudgeServer:
  """A running server; `stop()` (or leaving the `with` block) is required: JetStream's
  detokenize threads are non-daemon and would keep the process alive."""

  def __init__(self, engine: QwenEngine, port: int, host: str, threads: int | None):
    params = engine.load_params()
    self.host = host
    self._stopped = False
    self._lock = threading.Lock()
    self._driver = _js.orchestrator.Driver(
        prefill_engines=[engine], generate_engines=[engine], prefill_params=[params],
        generate_params=[params], interleaved_mode=True, jax_padding=False)
    self._executor = futures.ThreadPoolExecutor(threads or max(engine.max_concurrent_decodes, 8))
    self._loop = asyncio.new_event_loop()
    self._loop_thread = threading.Thread(target=self._loop.run_forever, name="judge-grpc",
                                         daemon=True)
    self._loop_thread.start()
    self._grpc = None
    try:
      self.port = self._run(self._start(engine, port), timeout_s=60)
    except BaseException:
      self.stop()
      raise
    self.address = f"{_bracket(host)}:{self.port}"

  async def _start(self, engine: QwenEngine, port: int) -> int:
    # gRPC sets SO_REUSEPORT by default: a second server on a busy port would bind and silently
    # share its traffic instead of failing.
    self._grpc = grpc.aio.server(self._executor, options=[("grpc.so_reuseport", 0)])
    _js.jetstream_pb2_grpc.add_OrchestratorServicer_to_server(
        _Servicer(self._driver, engine), self._grpc)
    bound = self._grpc.add_insecure_port(f"{_bracket(self.host)}:{port}")
    if not bound:
      raise OSError(f"could not bind {self.host}:{port}")
    await self._grpc.start()
    return bound

  def _run(self, coro, timeout_s: float):
    return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=timeout_s)

  def stop(self, grace_s: float = 1.0) -> None:
    """Stops taking requests, cancels those still running after `grace_s`, ends all threads."""
    with self._lock:
      if self._stopped:
        return
      self._stopped = True
    try:
      if self._grpc is not None:
        self._run(self._grpc.stop(grace_s), timeout_s=grace_s + 30)
    finally:
      self._driver.stop()
      self._loop.call_soon_threadsafe(self._loop.stop)
      self._loop_thread.join(timeout=30)
      if not self._loop_thread.is_alive():
        self._loop.close()
      self._executor.shutdown(wait=False)

  def __enter__(self) -> "JudgeServer":
    return self

  def __exit__(self, *exc) -> None:
    self.stop()


def _bracket(host: str) -> str:
  return f"[{host}]" if ":" in host and not host.startswith("[") else host


def start_server(engine_or_checkpoint: QwenEngine | str | os.PathLike, port: int = 0,
                 host: str = "127.0.0.1", *, threads: int | None = None,
                 **engine_kwargs) -> JudgeServer:
  """Serves an engine, or a checkpoint directory (`engine_kwargs` go to
  `QwenEngine.from_checkpoint`). Port 0 picks a free port: read `server.port`."""
  engine = engine_or_checkpoint
  if not isinstance(engine, QwenEngine):
    engine = QwenEngine.from_checkpoint(engine_or_checkpoint, **engine_kwargs)
  elif engine_kwargs:
    raise ValueError(f"engine options {sorted(engine_kwargs)} given with a ready engine")
  return JudgeServer(engine, port, host, threads)


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--checkpoint", required=True, help="Hugging Face checkpoint directory")
  p.add_argument("--port", type=int, required=True)
  p.add_argument("--host", default="127.0.0.1", help="interface to bind (0.0.0.0 / :: for all)")
  p.add_argument("--max_concurrent_decodes", type=int, default=8)
  p.add_argument("--max_prefill_length", type=int, default=1024,
                 help="power of two in [16, 32768]; longer prompts keep their last tokens")
  p.add_argument("--max_decode_length", type=int, default=256)
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  p.add_argument("--temperature", type=float, default=0.0)
  p.add_argument("--top_p", type=float, default=1.0)
  args = p.parse_args(argv)
  # JetStream logs every generate step at INFO on the root logger: keep the root at WARNING.
  logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
  _log.setLevel(logging.INFO)
  stop = threading.Event()
  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda *_: stop.set())
  with start_server(args.checkpoint, args.port, args.host,
                    max_concurrent_decodes=args.max_concurrent_decodes,
                    max_prefill_length=args.max_prefill_length,
                    max_decode_length=args.max_decode_length, dtype=getattr(jnp, args.dtype),
                    temperature=args.temperature, top_p=args.top_p) as server:
    _log.info("judge serving on %s", server.address)
    stop.wait()
    _log.info("stopping")


if __name__ == "__main__":
  main()
