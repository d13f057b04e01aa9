"""API keys: generation, HMAC-SHA256 hashing (only the hash is stored), constant-time checks."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time

KEY_PREFIXES = ("sf_live_", "sf_test_")
KEY_PATTERN = re.compile(r"^sf_(live|test)_[A-Za-z0-9]{32,64}$")
# Anything that looks like a key or a Stripe secret, for the log redaction filter.
SECRET_PATTERN = re.compile(r"(sf_(?:live|test)_[A-Za-z0-9]{6,}|sk_(?:test|live)_[A-Za-z0-9]+|whsec_[A-Za-z0-9]+)")
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def generate_key(live: bool = True) -> str:
    """A new API key; shown once to its owner, never stored."""
    body = "".join(secrets.choice(_ALPHABET) for _ in range(40))
    return ("sf_live_" if live else "sf_test_") + body


def hash_key(secret: bytes, key: str) -> str:
    """HMAC-SHA256 of the key under the server secret, hex."""
    return hmac.new(secret, key.encode(), hashlib.sha256).hexdigest()


def key_id(key_hash: str) -> str:
    """Public identifier of a key (listing, revoking): derived from the hash, not the key."""
    return "key_" + key_hash[:16]


def well_formed(key: str) -> bool:
    return bool(KEY_PATTERN.match(key))


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def sign_payload(secret: str, payload: bytes, timestamp: int | None = None) -> str:
    """Stripe-style signature header value: `t=<unix>,v1=<hex hmac(secret, "t.payload")>`."""
    ts = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={ts},v1={mac}"


def tenant_webhook_secret(server_secret: bytes, tenant: str) -> str:
    """The secret a tenant verifies completion webhooks with (derived, so nothing to store)."""
    return "whsec_" + hmac.new(server_secret, f"webhook:{tenant}".encode(), hashlib.sha256).hexdigest()[:40]
