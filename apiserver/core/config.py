"""One Settings class (SPATIALFORGE_API_* environment variables); refuses placeholder secrets."""

from __future__ import annotations

from functools import lru_cache
from typing import Self

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from spatialforge.crds.constants import ENV_RESEARCH_MODE

# Secrets that appear in docs, samples and tutorials: never acceptable outside dev mode.
EXAMPLE_SECRETS = frozenset({
    "changeme", "change-me", "changethis", "secret", "password", "example", "test", "dev",
    "sk_test_123", "sk_test_xxx", "whsec_xxx", "whsec_test", "whsec_example",
})
MIN_SECRET_BYTES = 32


def _looks_like_example(value: str) -> bool:
    low = value.lower()
    return low in EXAMPLE_SECRETS or "changeme" in low or "change-me" in low or "example" in low \
        or "changethis" in low or len(set(value)) < 6


class Settings(BaseSettings):
    """Everything the front end can be told; secrets are SecretStr so they never print."""

    model_config = SettingsConfigDict(env_prefix="SPATIALFORGE_API_", extra="ignore")

    dev_mode: bool = False
    """Allow missing or example secrets (a warning is logged). Never in production."""
    secret_key: SecretStr | None = None
    """Server secret for API-key HMACs and webhook-secret derivation (at least 32 bytes)."""
    previous_secret_key: SecretStr | None = None
    """The secret before a rotation: keys hashed under it are still accepted, and re-hashed
    under secret_key when used. Remove it once the grace period is over."""
    redis_url: str = "redis://127.0.0.1:16379/0"
    kubeconfig: str | None = Field(default=None,
                                   validation_alias=AliasChoices("SPATIALFORGE_API_KUBECONFIG", "KUBECONFIG", "kubeconfig"))
    """Kubeconfig path (SPATIALFORGE_API_KUBECONFIG, else KUBECONFIG, as kubectl and the
    operator read it); absent means in-cluster configuration."""
    namespace_prefix: str = "sf-"
    """Tenant namespace = prefix + tenant id."""

    s3_endpoint: str | None = None
    s3_public_endpoint: str | None = None
    """Endpoint written into signed URLs (defaults to s3_endpoint)."""
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    bucket: str = "spatialforge"
    """Bucket holding every tenant's inputs and results under tenants/<tenant>/."""
    results_url_ttl_seconds: int = Field(default=24 * 3600, ge=1, le=7 * 24 * 3600)
    upload_url_ttl_seconds: int = Field(default=3600, ge=1, le=7 * 24 * 3600)
    upload_max_bytes: int = Field(default=50 * 1024 * 1024, ge=1, le=5 * 1024**3)
    """Largest file one signed upload accepts (the presigned POST's content-length-range)."""
    uploads_retention_days: int = Field(default=30, ge=1, le=3650)
    """Uploaded inputs are expired by the bucket's lifecycle rule this many days after upload."""
    results_retention_days: int = Field(default=30, ge=1, le=3650)
    """Job outputs are expired by the bucket's lifecycle rule this many days after they are written."""
    max_spec_bytes: int = Field(default=1024 * 1024, ge=1024, le=1536 * 1024)
    """Largest serialized job resource accepted (etcd stores objects up to 1.5 MiB; status needs room)."""
    research_mode: bool = Field(default=False, validation_alias=AliasChoices(
        ENV_RESEARCH_MODE, "SPATIALFORGE_API_RESEARCH_MODE", "research_mode"))
    """Accept the CC-BY-NC-4.0 (non-commercial) base/large checkpoints. The chart's one
    `researchMode` value sets SPATIALFORGE_RESEARCH_MODE for the front end, operator and runner pods."""

    stripe_api_key: SecretStr | None = None
    stripe_api_base: str | None = None
    """Stripe API base (stripe-mock in tests); absent means api.stripe.com."""
    stripe_webhook_secret: SecretStr | None = None
    stripe_prices: dict[str, str] = Field(default_factory=lambda: {
        "builder": "price_builder_monthly", "pro": "price_pro_monthly"})
    """Plan -> Stripe price id."""
    stripe_meter_event: str = "spatialforge_gpu_seconds"
    payment_grace_seconds: int = Field(default=7 * 24 * 3600, ge=0)
    """After invoice.payment_failed, the plan holds this long before degrading to free."""
    public_url: str = "http://127.0.0.1:8000"
    """Where clients reach this server (checkout success/cancel and portal return URLs)."""

    webhook_allow: list[str] = Field(default_factory=list)
    """Hosts or CIDRs that completion webhooks may target even if private/loopback."""
    webhook_max_attempts: int = Field(default=6, ge=1, le=20)
    webhook_backoff_seconds: float = Field(default=2.0, gt=0)
    webhook_timeout_seconds: float = Field(default=5.0, gt=0)

    console_enabled: bool = True
    """Serve the web console (static files at /console, a client of this API; no endpoints of its own)."""
    cors_origins: list[str] = Field(default_factory=list)
    request_timeout_seconds: float = Field(default=30.0, gt=0)
    stripe_webhook_per_ip_per_minute: int = Field(default=120, ge=1)
    """Stripe-endpoint calls per address and minute whose signature does not verify (then 429).
    A correctly signed event is never refused by this limit."""
    failed_auth_per_ip_per_minute: int = Field(default=30, ge=1)
    """Failed authentications (unknown, revoked or malformed keys) per address and minute; past it
    the address gets 429 with Retry-After for any key until the minute ends."""
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    """Largest request body (413 past it, before the body is read; chunked bodies are counted)."""
    depth_pools: str = Field(default="", validation_alias=AliasChoices(
        "SPATIALFORGE_API_DEPTH_POOLS", "SPATIALFORGE_API_DEPTH_POOL", "depth_pools"))
    """DepthPools serving POST /v1/depth and /v1/measure: "<namespace>/<name>", comma-separated
    (a request's `model` picks the first pool of that size). Empty: those endpoints answer 503."""
    sync_max_image_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    """Largest image POST /v1/depth and /v1/measure take (uploaded, or read from an upload)."""
    sync_timeout_seconds: float = Field(default=20.0, gt=0)
    """How long a synchronous request may wait for the pool's answer (then 503, nothing charged)."""
    pool_refresh_seconds: float = Field(default=2.0, gt=0)
    """How old the listed EndpointSlices and DepthPool of a pool may be before they are listed again."""
    trusted_proxies: list[str] = Field(default_factory=list)
    """Addresses or CIDRs of the proxies (the ingress controller) whose X-Forwarded-For names the
    client; the per-address limits use that client. Empty: the peer address is the client."""
    metrics_port: int = Field(default=9464, ge=0, le=65535)
    """Port of Prometheus /metrics (its own listener, not routed by the ingress); 0: not served."""
    metrics_host: str = "0.0.0.0"
    public_docs: bool | None = None
    """Serve /docs, /redoc and /openapi.json without a key; default: only in dev mode."""
    log_json: bool = True
    log_level: str = Field(default="INFO", validation_alias=AliasChoices(
        "SPATIALFORGE_API_LOG_LEVEL", "SPATIALFORGE_LOG_LEVEL", "log_level"))
    """Level of the front end's own loggers (DEBUG, INFO, WARNING, ERROR); the chart's
    `apiserver.logLevel`. SPATIALFORGE_LOG_LEVEL (the operator's name) is read too."""

    webhook_poll_seconds: float = Field(default=1.0, gt=0)
    """How often the webhook worker looks for due deliveries in Redis (it also wakes on its own enqueues)."""
    webhook_lease_seconds: float = Field(default=30.0, gt=0)
    """How long a claimed delivery is its claimer's; then another worker retries it (at least timeout + 1 s)."""
    webhook_concurrency: int = Field(default=16, ge=1)
    """Deliveries in flight per process."""
    grace_sweep_seconds: float = Field(default=30.0, gt=0)
    """How often each replica degrades tenants whose payment grace period has run out."""

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError(f"log_level must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {value!r}")
        return level

    @model_validator(mode="after")
    def _refuse_weak_secrets(self) -> Self:
        if self.dev_mode:
            return self
        problems = []
        for name in ("secret_key", "stripe_api_key", "stripe_webhook_secret", "s3_secret_access_key"):
            value = getattr(self, name)
            raw = value.get_secret_value() if value is not None else ""
            if not raw:
                problems.append(f"{name} is missing")
            elif _looks_like_example(raw):
                problems.append(f"{name} is an example or placeholder value")
        key = self.secret_key.get_secret_value() if self.secret_key else ""
        if key and len(key.encode()) < MIN_SECRET_BYTES:
            problems.append(f"secret_key must be at least {MIN_SECRET_BYTES} bytes")
        previous = self.previous_secret_key.get_secret_value() if self.previous_secret_key else ""
        if previous and (len(previous.encode()) < MIN_SECRET_BYTES or _looks_like_example(previous)):
            problems.append(f"previous_secret_key must be at least {MIN_SECRET_BYTES} bytes and not an example value")
        if problems:
            raise ValueError("refusing to start: " + "; ".join(problems)
                             + " (set SPATIALFORGE_API_DEV_MODE=1 only for local development)")
        return self

    def secret_values(self) -> list[str]:
        """Every configured secret, for the log redaction filter."""
        out = []
        for name in ("secret_key", "previous_secret_key", "stripe_api_key", "stripe_webhook_secret",
                     "s3_secret_access_key"):
            value = getattr(self, name)
            if value is not None and value.get_secret_value():
                out.append(value.get_secret_value())
        return out

    def docs_enabled(self) -> bool:
        return self.dev_mode if self.public_docs is None else self.public_docs

    def hmac_key(self) -> bytes:
        if self.secret_key is not None and self.secret_key.get_secret_value():
            return self.secret_key.get_secret_value().encode()
        return b"spatialforge-dev-mode-only-secret-key!"  # dev mode only (validator above)

    def previous_hmac_key(self) -> bytes | None:
        """The pre-rotation secret, while a rotation's grace period lasts."""
        if self.previous_secret_key is not None and self.previous_secret_key.get_secret_value():
            return self.previous_secret_key.get_secret_value().encode()
        return None


@lru_cache
def get_settings() -> Settings:
    """Settings from the environment; invalid ones end the process with one line naming each
    problem (never the values: they may be secrets), not a traceback."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg'].removeprefix('Value error, ')}"
            for err in exc.errors(include_input=False, include_url=False))
        raise SystemExit(f"spatialforge front end: {problems}") from None
