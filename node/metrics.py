"""Prometheus metrics of the node and its workers (``prometheus_client`` in multiprocess mode).

``setup(data_dir)`` points ``PROMETHEUS_MULTIPROC_DIR`` at ``<data_dir>/metrics`` (emptied at node
start, as prometheus_client's documentation asks) before any metric exists and before the embedded
workers start, so their counters and histograms land in the same folder and ``exposition()`` sums
every process. Metric objects are made on first use (``_m()``): prometheus_client picks its value
store when it is first imported, so nothing here may import it at module import time.

Labels carry AE titles and destination names only (no UIDs: unbounded label values break Prometheus).
"""

from __future__ import annotations

import logging
import os
import shutil
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

logger = logging.getLogger(__name__)

ENV_DIR = "PROMETHEUS_MULTIPROC_DIR"
# received -> classified -> rendered -> dispatched: seconds from the previous state (minutes at most)
STAGE_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
STAGE_STATES = {"classify": "classified", "render": "rendered", "dispatch": "dispatched"}


def setup(data_dir: Path, *, fresh: bool = True) -> Path:
    """Use ``<data_dir>/metrics`` for every process of this node (call before workers start)."""
    folder = data_dir / "metrics"
    if fresh and folder.exists():
        shutil.rmtree(folder)  # values of a previous run's processes (counters restart, as after any restart)
    folder.mkdir(parents=True, exist_ok=True)
    os.environ[ENV_DIR] = str(folder)
    return folder


@cache
def _m() -> SimpleNamespace:
    from prometheus_client import Counter, Gauge, Histogram

    return SimpleNamespace(
        associations=Counter("alnnode_associations_total", "DICOM associations by calling AE and outcome", ["calling_ae", "outcome"]),
        instances=Counter("alnnode_instances_received_total", "instances stored (C-STORE success) by calling AE", ["calling_ae"]),
        bytes=Counter("alnnode_received_bytes_total", "bytes of C-STORE data sets received by calling AE", ["calling_ae"]),
        statuses=Counter("alnnode_cstore_status_total", "C-STORE responses by calling AE and status", ["calling_ae", "status"]),
        stage=Histogram("alnnode_stage_seconds", "seconds from the previous state to this one", ["stage"], buckets=STAGE_BUCKETS),
        dispatch=Counter("alnnode_dispatch_attempts_total", "delivery attempts by destination", ["destination"]),
        dispatch_failed=Counter("alnnode_dispatch_failures_total", "failed delivery attempts by destination", ["destination"]),
        inference=Histogram("alnnode_model_inference_seconds", "classify stage: decode, model and Grad-CAM of one loop",
                            buckets=(0.25, 0.5, 1, 2, 5, 10, 20, 60, 120, 300)),  # fmt: skip
        gpu=Gauge("alnnode_gpu_memory_bytes", "peak CUDA memory allocated by a worker process", ["device"], multiprocess_mode="max"),
    )


def _safe(fn: Any) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except Exception as exc:  # a metric must never fail a store or a job
            logger.warning("metric %s not recorded: %s: %s", fn.__name__, type(exc).__name__, exc)

    wrapper.__name__ = fn.__name__
    return wrapper


@_safe
def count_association(calling_ae: str, accepted: bool) -> None:
    _m().associations.labels(calling_ae or "(empty)", "accepted" if accepted else "rejected").inc()


@_safe
def count_store(calling_ae: str, size: int, status: int) -> None:
    m = _m()
    ae = calling_ae or "(empty)"
    m.statuses.labels(ae, f"0x{status:04X}").inc()
    m.bytes.labels(ae).inc(size)
    if status == 0:
        m.instances.labels(ae).inc()


@_safe
def count_dispatch(destination: str, ok: bool) -> None:
    m = _m()
    m.dispatch.labels(destination).inc()
    if not ok:
        m.dispatch_failed.labels(destination).inc()


@_safe
def observe_stage(stage: str, seconds: float) -> None:
    _m().stage.labels(stage).observe(max(seconds, 0.0))


@_safe
def observe_inference(seconds: float, gpu: tuple[str, float] | None = None) -> None:
    """One classify stage; ``gpu``: (device, peak bytes allocated) measured by the worker (node/ has no torch)."""
    _m().inference.observe(seconds)
    if gpu is not None:
        _m().gpu.labels(gpu[0]).set(gpu[1])


def observe_transition(ledger: Any, uid: str, stage: str, started: Any) -> bool:
    """After ``stage`` ran for ``uid``: observe the latency of the state it reached, from the ledger's
    own timestamps, when this run (begun at ``started``) made that transition."""
    try:
        target = STAGE_STATES[stage]
        history = ledger.history(uid)
        if not history or history[-1][0] != target or _aware(history[-1][1]) < _aware(started):
            return False
        previous = [at for state, at, _ in history[:-1] if state in ("received", "classified", "rendered")]
        if previous:
            observe_stage(target, (_aware(history[-1][1]) - _aware(previous[-1])).total_seconds())
        return True
    except Exception as exc:
        logger.warning("stage latency of %s not recorded: %s: %s", uid, type(exc).__name__, exc)
        return False


def _aware(value: Any) -> Any:
    from node.ledger import aware

    return aware(value)


class JobsCollector:
    """``alnnode_jobs{state}`` read from the ledger at each scrape (``ledger.counts()``)."""

    def __init__(self, ledger: Any) -> None:
        self.ledger = ledger

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily("alnnode_jobs", "jobs in the ledger by state", labels=["state"])
        try:
            for state, n in self.ledger.counts().items():
                family.add_metric([state], n)
        except Exception as exc:  # the ledger being down shows as missing series and in /readyz
            logger.warning("jobs by state not collected: %s", exc)
        yield family


def exposition(ledger: Any | None = None) -> tuple[bytes, str]:
    """The text exposition of all processes' metrics (multiprocess) plus jobs by state."""
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        REGISTRY,
        CollectorRegistry,
        generate_latest,
        multiprocess,
    )

    folder = os.environ.get(ENV_DIR)
    if folder:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=folder)
    else:
        registry = REGISTRY
    if ledger is not None:
        extra = CollectorRegistry()
        extra.register(JobsCollector(ledger))  # type: ignore[arg-type]
        return generate_latest(registry) + generate_latest(extra), CONTENT_TYPE_LATEST
    return generate_latest(registry), CONTENT_TYPE_LATEST
