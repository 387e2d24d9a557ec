"""The scheduler: one thread owns the model's running batch; requests join between decode steps.

    engine = Engine(model, EngineConfig(max_batch=8)).start()
    handle = engine.submit(Request(prompt_ids, config, preference), on_event)   # QueueFull when full
    ...  on_event(Event("token", piece=...)) per step, then Event("done", result=...) or Event("error", ...)
    handle.cancel()                     # the client left: its row is freed at the next step boundary
    engine.stop()

Each tick: retire finished or cancelled rows, admit waiting requests into free rows (each prefilled
alone, so its first token is out at once), rebuild the batch's K/V once if its rows changed, then one
decode step for all rows, each with its own preference (router_mix row) and sampling settings.
`on_event` is called on the scheduler thread and must not block (the HTTP layer hands events over to
its event loop). A request that fails fails alone; the thread survives every request.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from hoe.core.errors import ConfigError, HoEError

from .batch import RunningBatch
from .config import EngineConfig
from .metrics import Metrics
from .rows import Request, Row

log = logging.getLogger(__name__)


class QueueFull(HoEError):
    """Every row is busy and the waiting queue is full."""


class EngineStopped(HoEError):
    """The engine is not running."""


@dataclass
class Event:
    kind: str  # "token" (piece), "done" (result) or "error" (error: an exception)
    piece: str = ""
    result: Any = None
    error: Exception | None = None


class Handle:
    """A submitted request: cancel() frees its row (or its place in the queue)."""

    def __init__(self, request: Request, on_event) -> None:
        self.request = request
        self.on_event = on_event
        self.cancelled = False
        self.row: Row | None = None

    def cancel(self) -> None:
        self.cancelled = True


class Engine:
    def __init__(self, model, config: EngineConfig | None = None, metrics: Metrics | None = None) -> None:
        self.model = model
        self.config = config or EngineConfig()
        if self.config.max_batch > 1 and not model.backend.supports_row_kv:
            raise ConfigError(f"continuous batching needs row-level K/V access, which backend {model.backend.name!r} "
                              f"lacks; use max_batch 1 (--max-batch 1) or the 'ort' backend")
        self.metrics = metrics or Metrics()
        self.metrics.batch_capacity.set(self.config.max_batch)
        self.batch = RunningBatch(model)
        self._handles: list[Handle] = []  # one per batch row, same order
        self._queue: collections.deque[Handle] = collections.deque()
        self._wake = threading.Condition()
        self._occupied = 0  # rows taken: in the batch, or being prefilled to join it (guarded by _wake)
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.steps = 0

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> Engine:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="hoe-engine", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        for h in list(self._queue) + self._handles:
            self._emit(h, Event("error", error=EngineStopped("the server is shutting down")))
        self._queue.clear()
        self._handles, self._occupied = [], 0
        self.batch.clear()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    # -- requests ----------------------------------------------------------------------------------------
    def submit(self, request: Request, on_event) -> Handle:
        if not self.running:
            raise EngineStopped("the engine is not running")
        handle = Handle(request, on_event)
        with self._wake:
            if len(self._queue) >= self.config.max_queue + max(0, self.config.max_batch - self._occupied):
                raise QueueFull(f"{self._occupied} rows busy (max_batch {self.config.max_batch}) and "
                                f"{len(self._queue)} requests waiting (max_queue {self.config.max_queue})")
            self._queue.append(handle)
            self.metrics.queue_length.set(len(self._queue))
            self._wake.notify()
        return handle

    def load(self) -> dict:
        return {"rows": self._occupied, "queued": len(self._queue), "max_batch": self.config.max_batch,
                "max_queue": self.config.max_queue, "steps": self.steps}

    # -- the scheduler thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopping:
            try:
                self._tick()
            except Exception as e:  # noqa: BLE001 - a failing step fails its rows, never the server
                log.exception("decode step failed; failing the %d rows of the batch", len(self._handles))
                for h in self._handles:
                    self._emit(h, Event("error", error=e))
                self._handles = []
                self.batch.clear()
                with self._wake:
                    self._occupied = 0

    def _tick(self) -> None:
        finished = [self._finished(h) for h in self._handles]
        keep = [i for i, f in enumerate(finished) if not f]
        self._retire([h for h, f in zip(self._handles, finished) if f])
        joining = self._admit(self.config.max_batch - len(keep))
        self._handles = [self._handles[i] for i in keep] + [h for h, _ in joining]  # a failure below fails them
        self.batch.update(keep, [(h.row, state) for h, state in joining])
        self.metrics.batch_rows.set(len(self._handles))
        if not self._handles:
            with self._wake:
                if not self._queue and not self._stopping:
                    self._wake.wait(self.config.idle_wait_s)
            return
        start = time.perf_counter()
        pieces = self.batch.step()
        self.steps += 1
        self.metrics.step_seconds.observe(time.perf_counter() - start)
        self.metrics.step_rows.observe(len(self._handles))
        for h, piece in zip(self._handles, pieces):
            self._token(h, piece)

    @staticmethod
    def _finished(h: Handle) -> bool:
        return h.cancelled or h.row.finish_reason is not None

    def _admit(self, free: int) -> list[tuple[Handle, object]]:
        """Prefill up to `free` waiting requests, one by one; those done at their first token never join."""
        joining = []
        while len(joining) < free:
            with self._wake:
                if not self._queue:
                    break
                h = self._queue.popleft()
                self.metrics.queue_length.set(len(self._queue))
                if h.cancelled:
                    self.metrics.finished.labels("cancelled").inc()
                    continue
                self._occupied += 1
            try:
                h.row = Row(self.model, h.request)
                state, piece = self.batch.prefill(h.row)
            except Exception as e:  # noqa: BLE001 - a bad request fails alone
                if not isinstance(e, HoEError):
                    log.exception("prefill of request %s failed", h.request.id)
                self._release(1)
                self._emit(h, Event("error", error=e))
                continue
            self.metrics.prompt_tokens.inc(len(h.request.prompt_ids))
            self.metrics.ttft_seconds.observe(h.row.first_token_at - h.request.arrived)
            self._token(h, piece)
            if not self._finished(h):
                joining.append((h, state))
            else:
                self._retire([h])
        return joining

    def _token(self, h: Handle, piece: str) -> None:
        row = h.row
        self.metrics.generated_tokens.inc()
        if row.previous_token_at is not None:
            self.metrics.itl_seconds.observe(row.last_token_at - row.previous_token_at)
        if h.cancelled:
            return
        if piece:
            self._emit(h, Event("token", piece=piece))
        if row.finish_reason is not None:
            self._emit(h, Event("done", result=row.result()))

    def _release(self, n: int) -> None:
        with self._wake:
            self._occupied -= n

    def _retire(self, handles: list[Handle]) -> None:
        self._release(len(handles))
        for h in handles:
            reason = "cancelled" if h.cancelled else h.row.finish_reason
            self.metrics.finished.labels(reason).inc()
            self.metrics.request_seconds.observe(h.row.last_token_at - h.request.arrived)

    def _emit(self, h: Handle, event: Event) -> None:
        try:
            h.on_event(event)
        except Exception:  # noqa: BLE001 - a broken consumer (closed event loop) only loses its own request
            log.debug("request %s: event consumer failed; cancelling it", h.request.id, exc_info=True)
            h.cancel()
