"""Prometheus metrics of one gateway (its own registry, so several can live in one process).

Names follow Prometheus conventions: snake_case, base units (``_seconds``), counters end
in ``_total``. Labels are dimensions with a bounded set of values: model and version
come from the repository (a request for an unknown model is counted under model ""),
status codes, endpoints, and fixed reason words. There is never a label per caller,
token or client address.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

#: Fixed words for authentication denials (the label values of bastion_auth_denials_total).
DENIAL_REASONS = ("missing_token", "invalid_token", "expired_token", "revoked_token", "replayed_token",
                  "insufficient_scope", "address_limited")
#: The shared state's operations (the label values of bastion_shared_state_errors_total).
STATE_OPERATIONS = ("take", "peek", "spend_once", "is_spent", "ping", "other")


class GatewayMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("bastion_requests_total", "HTTP requests answered, by model, version and status code.",
                                ["model", "version", "code"], registry=registry)
        self.request_seconds = Histogram("bastion_request_duration_seconds", "Time to answer a request.",
                                         ["endpoint"], buckets=LATENCY_BUCKETS, registry=registry)
        self.inference_seconds = Histogram("bastion_inference_duration_seconds",
                                           "Time of one batched forward pass (with the detector, if on).",
                                           ["model", "version"], buckets=LATENCY_BUCKETS, registry=registry)
        self.batch_size = Histogram("bastion_inference_batch_size", "Rows per forward pass after dynamic batching.",
                                    ["model", "version"], buckets=BATCH_BUCKETS, registry=registry)
        self.auth_denials = Counter("bastion_auth_denials_total", "Requests refused by authentication or scope.",
                                    ["reason"], registry=registry)
        self.rate_limited = Counter("bastion_rate_limited_total", "Requests refused by a caller's rate limit.",
                                    ["scope"], registry=registry)
        self.shed = Counter("bastion_shed_total", "Requests refused because the in-flight cap was reached.",
                            registry=registry)
        self.detector_flags = Counter("bastion_detector_flags_total",
                                      "Inputs the serving-time detector flagged (flag) or refused (reject).",
                                      ["model", "version", "mode"], registry=registry)
        self.model_ready = Gauge("bastion_model_ready", "1 while this model version is served, else 0.",
                                 ["model", "version"], registry=registry)
        self.model_refusals = Counter("bastion_model_refusals_total",
                                      "Model versions refused at load, by the check that said no.",
                                      ["model", "reason"], registry=registry)
        self.models_served = Gauge("bastion_models_served", "Model versions being served.", registry=registry)
        self.in_flight = Gauge("bastion_requests_in_flight", "Requests being answered now.", registry=registry)
        self.state_errors = Counter("bastion_shared_state_errors_total",
                                    "Operations the shared state (rate limits, one-time jti) could not do: "
                                    "its store was unreachable, too slow or answered in error.",
                                    ["operation"], registry=registry)
        for reason in DENIAL_REASONS:  # present from the start, so rate() works before the first denial
            self.auth_denials.labels(reason)
        for operation in STATE_OPERATIONS:
            self.state_errors.labels(operation)

    def state_error(self, operation: str) -> None:
        """Count one failed operation of the shared state (its ``on_error`` hook; any thread)."""
        self.state_errors.labels(operation if operation in STATE_OPERATIONS else "other").inc()

    def count_refusal(self, outcome) -> None:
        """Count an authorizer's refusal: a caller's rate limit, an auth denial, or neither (503: the state)."""
        status = int((outcome.headers or {}).get("x-bastion-status", outcome.status))  # as decided, before nginx's 403
        if status == 503:
            return  # counted where it happened, in bastion_shared_state_errors_total
        if status == 429 and outcome.decision is not None:
            self.rate_limited.labels(outcome.scope or "").inc()
        else:
            self.auth_denials.labels(denial_reason(status, outcome.reason)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


def denial_reason(status: int, reason: str) -> str:
    """The fixed word for a refusal (``reason`` is the policy's free-text reason)."""
    if status == 403:
        return "insufficient_scope"
    if status == 429:
        return "address_limited"
    text = reason.lower()
    if "no bearer token" in text:
        return "missing_token"
    for word, label in (("expired", "expired_token"), ("revoked", "revoked_token"), ("replayed", "replayed_token")):
        if word in text:
            return label
    return "invalid_token"
