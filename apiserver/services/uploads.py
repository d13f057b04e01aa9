"""Uploads: signed POST forms into the tenant's input prefix, listing, and counting uploaded
bytes in the month's usage (when a job uses an upload, or when uploads are listed).

Counting is incremental and idempotent: Redis keeps the bytes already counted per upload and
adds only growth, so an upload counted while half its files were in is topped up later, and
one counted twice is counted once.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections import defaultdict
from typing import Any

from redis.asyncio import Redis
from starlette.concurrency import run_in_threadpool

from spatialforge.apiserver.core.config import Settings
from spatialforge.apiserver.services import quotas
from spatialforge.apiserver.services.storage import UPLOAD_ID, Storage, expiry, split_uri

# KEYS[1] per-upload counted bytes, KEYS[2] month usage hash; ARGV size, ttl -> bytes added
_COUNT = """
local before = tonumber(redis.call('GET', KEYS[1]) or '0')
local size = tonumber(ARGV[1])
if size <= before then return 0 end
redis.call('SET', KEYS[1], size, 'EX', ARGV[2])
redis.call('HINCRBY', KEYS[2], 'upload_bytes', size - before)
redis.call('EXPIRE', KEYS[2], 3456000)
return size - before
"""


class Uploads:
    def __init__(self, *, settings: Settings, redis: Redis, storage: Storage) -> None:
        self.settings = settings
        self.redis = redis
        self.storage = storage
        self._count = redis.register_script(_COUNT)

    async def create(self, tenant: str, files: list[tuple[str, str | None]]) -> dict[str, Any]:
        """Signed POST forms for each (name, content type) under a fresh upload prefix."""
        ttl = self.settings.upload_url_ttl_seconds
        upload = secrets.token_hex(8)
        key_prefix = f"tenants/{tenant}/inputs/{upload}/"

        def sign() -> list[dict[str, Any]]:
            out = []
            for name, content_type in files:
                form = self.storage.sign_upload(key_prefix + name, content_type, ttl)
                out.append({"name": name, "uri": f"s3://{self.storage.bucket}/{key_prefix}{name}",
                            "url": form["url"], "method": "POST", "fields": form["fields"], "headers": {}})
            return out

        return {"id": upload, "prefix": f"s3://{self.storage.bucket}/{key_prefix}", "expires_in": ttl,
                "max_bytes": self.settings.upload_max_bytes, "files": await run_in_threadpool(sign)}

    async def count(self, tenant: str, upload: str, size: int) -> int:
        """Add an upload's growth since it was last counted to this month's `upload_bytes`."""
        ttl = (self.settings.uploads_retention_days + 40) * 86400
        return int(await self._count(keys=[f"upload:counted:{tenant}:{upload}", quotas.usage_key(tenant)],
                                     args=[size, ttl]))

    async def count_used(self, tenant: str, uris: list[str]) -> int:
        """Count the uploads a job's inputs point into; returns the bytes added."""
        ids = sorted({u for u in (self.storage.upload_id(tenant, uri) for uri in uris) if u})
        added = 0
        for upload in ids[:100]:  # a job names a few uploads; never list thousands on a create
            items = await self.storage.list_under(f"{self.storage.uploads_prefix(tenant)}{upload}/")
            added += await self.count(tenant, upload, sum(int(o["Size"]) for o in items))
        return added

    async def list(self, tenant: str) -> list[dict[str, Any]]:
        """The tenant's uploads (newest first) with size and expiry; counts each one's bytes."""
        items = await self.storage.list_under(self.storage.uploads_prefix(tenant))
        _, base = split_uri(self.storage.uploads_prefix(tenant))
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for o in items:
            upload = o["Key"][len(base):].split("/", 1)[0]
            if UPLOAD_ID.match(upload):
                groups[upload].append(o)
        out = []
        days = self.settings.uploads_retention_days
        for upload, objs in groups.items():
            size = sum(int(o["Size"]) for o in objs)
            await self.count(tenant, upload, size)
            first: dt.datetime = min(o["LastModified"] for o in objs)
            last: dt.datetime = max(o["LastModified"] for o in objs)
            out.append({"id": upload, "prefix": f"{self.storage.uploads_prefix(tenant)}{upload}/", "files": len(objs),
                        "bytes": size, "uploaded_at": _iso(last), "expires_at": _iso(expiry(first, days))})
        out.sort(key=lambda u: u["uploaded_at"], reverse=True)
        return out


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
