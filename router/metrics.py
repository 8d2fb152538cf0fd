"""GET /metrics: Prometheus text through prometheus_client, named after vLLM's metrics with a
`pypto:` prefix (vllm:num_requests_running -> pypto:num_requests_running), per replica.

Replica gauges and cumulative counters (running, waiting, KV usage, prefix-cache hits and
queries, preemptions, engine steps and their seconds by kind) come from each replica's last
stats reply, read at scrape time by a collector; latencies and finish reasons are measured
by the router per request, and each request's phases in the engine (queue, prefill, decode)
come with its final output.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .pool import ReplicaPool

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
ITL_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
               1.0, 2.5, 5.0, 10.0)
E2E_BUCKETS = (0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
               50.0, 60.0, 120.0, 240.0)

STEP_KINDS = ("prefill", "decode")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _ReplicaCollector(Collector):
    """The replicas' own figures, from their last stats, at scrape time."""

    def __init__(self, pool: ReplicaPool, model: str) -> None:
        self.pool, self.model = pool, model

    def collect(self) -> Iterator:
        labels = ["model_name", "replica"]
        gauges = {
            "num_requests_running": ("Requests running on the replica.", "running"),
            "num_requests_waiting": ("Requests waiting on the replica.", "waiting"),
            "kv_cache_usage_perc": ("Share of the replica's KV-cache blocks in use (0..1).",
                                    "kv_usage"),
            "num_pending_tokens": ("Prompt tokens not yet prefilled plus tokens still to "
                                   "decode (the least_loaded policy's load).", "pending_tokens"),
        }
        counters = {
            "prefix_cache_hits": ("Prompt tokens found in the prefix cache.", "prefix_hits"),
            "prefix_cache_queries": ("Prompt tokens looked up in the prefix cache.",
                                     "prefix_queries"),
            "num_preemptions": ("Requests preempted for lack of KV blocks.",
                                "num_preemptions"),
        }
        fams = {k: GaugeMetricFamily(f"pypto:{k}", doc, labels=labels)
                for k, (doc, _) in gauges.items()}
        cfams = {k: CounterMetricFamily(f"pypto:{k}", doc, labels=labels)
                 for k, (doc, _) in counters.items()}
        healthy = GaugeMetricFamily("pypto:replica_ready", "1 while the replica is in "
                                    "rotation.", labels=labels)
        steps = CounterMetricFamily("pypto:engine_steps", "Engine steps run, by kind "
                                    "(decode: only decodes; prefill: at least one prefill "
                                    "chunk).", labels=[*labels, "kind"])
        step_s = CounterMetricFamily("pypto:engine_step_seconds", "Seconds the replica's "
                                     "executor spent in those steps.", labels=[*labels, "kind"])
        for r, client in sorted(self.pool.replicas.items()):
            lv = [self.model, str(r)]
            stats = client.state.stats
            healthy.add_metric(lv, 1.0 if client.ready else 0.0)
            for k, (_, key) in gauges.items():
                fams[k].add_metric(lv, float(stats.get(key, 0) or 0))
            for k, (_, key) in counters.items():
                cfams[k].add_metric(lv, float(stats.get(key, 0) or 0))
            for family, key in ((steps, "steps"), (step_s, "step_seconds")):
                by_kind = stats.get(key)
                for kind in STEP_KINDS:
                    value = by_kind.get(kind, 0) if isinstance(by_kind, dict) else 0
                    family.add_metric([*lv, kind], float(value or 0))
        yield healthy
        yield from fams.values()
        yield from cfams.values()
        yield steps
        yield step_s


class RouterMetrics:
    """The router's registry (one per app, so tests can run several)."""

    def __init__(self, pool: ReplicaPool, model: str) -> None:
        self.model = model
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_ReplicaCollector(pool, model))
        labels = ["model_name", "replica"]
        r = self.registry
        self.ttft = Histogram("pypto:time_to_first_token_seconds", "Time to first token.",
                              labels, buckets=TTFT_BUCKETS, registry=r)
        self.itl = Histogram("pypto:inter_token_latency_seconds", "Time between two output "
                             "chunks of a request.", labels, buckets=ITL_BUCKETS, registry=r)
        self.e2e = Histogram("pypto:e2e_request_latency_seconds", "Request latency, arrival "
                             "to last token.", labels, buckets=E2E_BUCKETS, registry=r)
        phase_docs = {"queue": "waiting in the replica's queue, arrival to first scheduled",
                      "prefill": "first scheduled to first token",
                      "decode": "first token to the end"}
        self.phases = {phase: Histogram(
            f"pypto:request_{phase}_time_seconds", f"Time a request spent {doc} (measured "
            "in the replica's engine).", labels,
            buckets=E2E_BUCKETS if phase == "decode" else TTFT_BUCKETS, registry=r)
            for phase, doc in phase_docs.items()}
        self.success = Counter("pypto:request_success", "Finished requests by finish reason.",
                               [*labels, "finished_reason"], registry=r)
        self.prompt_tokens = Counter("pypto:prompt_tokens", "Prompt tokens processed.",
                                     labels, registry=r)
        self.generation_tokens = Counter("pypto:generation_tokens", "Tokens generated.",
                                         labels, registry=r)
        self.cached_tokens = Counter("pypto:prompt_tokens_cached", "Prompt tokens served "
                                     "from the prefix cache.", labels, registry=r)
        self.retries = Counter("pypto:request_retries", "Requests sent again because their "
                               "replica failed.", ["model_name"], registry=r)
        self.errors = Counter("pypto:request_errors", "Requests ended with an error, by HTTP "
                              "status.", ["model_name", "status"], registry=r)
        self._series: dict[int, ReplicaSeries] = {}

    def series(self, replica: int) -> ReplicaSeries:
        """The replica's labelled children, looked up once (a `labels()` call costs a few
        microseconds, and a request takes several)."""
        s = self._series.get(replica)
        if s is None:
            s = self._series[replica] = ReplicaSeries(self, (self.model, str(replica)))
        return s

    def render(self) -> bytes:
        return generate_latest(self.registry)


class ReplicaSeries:
    """One replica's children of the router's per-request metrics."""

    def __init__(self, m: RouterMetrics, lv: tuple[str, str]) -> None:
        self._success_of = m.success
        self._lv = lv
        self.ttft = m.ttft.labels(*lv)
        self.itl = m.itl.labels(*lv)
        self.e2e = m.e2e.labels(*lv)
        self.prompt_tokens = m.prompt_tokens.labels(*lv)
        self.generation_tokens = m.generation_tokens.labels(*lv)
        self.cached_tokens = m.cached_tokens.labels(*lv)
        self.phases = {phase: h.labels(*lv) for phase, h in m.phases.items()}
        self._success: dict[str, Any] = {}

    def finished(self, reason: str, *, prompt: int, completion: int, cached: int,
                 e2e_s: float, timings: Any = None) -> None:
        """One finished request; `timings` is its engine's {queue_s, prefill_s, decode_s}
        (any missing or malformed entry is skipped: a replica's message is not trusted)."""
        if isinstance(timings, dict):
            for phase, hist in self.phases.items():
                value = timings.get(f"{phase}_s")
                if isinstance(value, (int, float)) and 0 <= value < float("inf"):
                    hist.observe(value)
        success = self._success.get(reason)
        if success is None:
            success = self._success[reason] = self._success_of.labels(*self._lv, reason)
        success.inc()
        self.prompt_tokens.inc(prompt)
        self.generation_tokens.inc(completion)
        self.cached_tokens.inc(cached)
        self.e2e.observe(e2e_s)
