"""Prometheus metrics, one registry per app (tests run several apps in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("sf_api_requests_total", "HTTP requests", ["method", "route", "status"], registry=r)
        self.latency = Histogram("sf_api_request_seconds", "HTTP request latency", ["method", "route"], registry=r,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.refusals = Counter("sf_api_quota_refusals_total", "Requests refused by a limit", ["reason"], registry=r)
        self.jobs = Counter("sf_api_jobs_created_total", "Jobs created", ["kind", "plan"], registry=r)
        self.webhooks = Counter("sf_api_webhook_deliveries_total", "Completion webhook outcomes", ["result"], registry=r)
        self.stripe_events = Counter("sf_api_stripe_events_total", "Stripe webhook events", ["type", "result"], registry=r)
        self.usage_reports = Counter("sf_api_usage_reports_total", "Usage reports of finished jobs", ["result"], registry=r)
        self.grace_downgrades = Counter("sf_api_grace_downgrades_total",
                                        "Tenants degraded to free after their payment grace period", ["via"], registry=r)
        self.pool_refused = Counter("sf_api_pool_connect_refused_total",
                                    "Pool servers that refused a connection (the request was tried on another)",
                                    ["pool"], registry=r)
        self.grace_sweeps = Counter("sf_api_grace_sweeps_total", "Grace sweeps that ran to the end", registry=r)
