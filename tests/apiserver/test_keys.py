"""Key lifecycle (create, list, revoke, rotate), hashing at rest, authentication failures,
admin-only endpoints, and the `spatialforge api` CLI."""

from __future__ import annotations

import uuid

import httpx
import redis

from spatialforge.apiserver.core.security import hash_key
from tests.apiserver.conftest import SECRET_KEY, ServerThread
from tests.apiserver.test_limits import fresh_window


def test_key_lifecycle_and_only_hashes_stored(api, admin, make_settings):
    r = admin.post("/v1/admin/keys", json={"tenant": "keys-acme", "name": "ci"})
    assert r.status_code == 201, r.text
    created = r.json()
    key = created["key"]
    assert key.startswith("sf_live_") and created["key_id"].startswith("key_")

    # Only the HMAC is stored: no Redis key or value contains the key itself.
    digest = hash_key(SECRET_KEY.encode(), key)
    rc = redis.Redis.from_url(make_settings().redis_url, decode_responses=True)
    record = rc.hgetall(f"apikey:{digest}")
    assert record["tenant"] == "keys-acme" and record["revoked"] == ""
    for name in rc.scan_iter(count=1000):
        assert key not in name
        kind = rc.type(name)
        values = {"string": lambda: [rc.get(name)], "hash": lambda: list(rc.hgetall(name).values()),
                  "set": lambda: list(rc.smembers(name)), "list": lambda: rc.lrange(name, 0, -1)}.get(kind, lambda: [])()
        assert all(key not in str(v) for v in values), name

    listed = admin.get("/v1/admin/keys", params={"tenant": "keys-acme"}).json()
    assert [k["key_id"] for k in listed["data"]] == [created["key_id"]] and listed["count"] == 1
    assert "key" not in listed["data"][0] and key not in str(listed)

    for headers in ({"X-API-Key": key}, {"Authorization": f"Bearer {key}"}):
        assert httpx.get(f"{api.url}/v1/usage", headers=headers).status_code == 200

    rotated = admin.post(f"/v1/admin/keys/{created['key_id']}/rotate")
    assert rotated.status_code == 201
    new_key = rotated.json()["key"]
    assert new_key != key and rotated.json()["tenant"] == "keys-acme"
    assert httpx.get(f"{api.url}/v1/usage", headers={"X-API-Key": key}).status_code == 401
    assert httpx.get(f"{api.url}/v1/usage", headers={"X-API-Key": new_key}).status_code == 200

    test_key = admin.post("/v1/admin/keys", json={"tenant": "keys-acme", "live": False}).json()
    assert test_key["key"].startswith("sf_test_")
    assert admin.post(f"/v1/admin/keys/{test_key['key_id']}/rotate").json()["key"].startswith("sf_test_")

    revoked = admin.delete(f"/v1/admin/keys/{rotated.json()['key_id']}")
    assert revoked.status_code == 200 and revoked.json()["revoked"]
    r = httpx.get(f"{api.url}/v1/usage", headers={"X-API-Key": new_key})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_key"
    assert admin.delete("/v1/admin/keys/key_0000000000000000").status_code == 404


def test_authentication_failures_are_401(api):
    cases = [{}, {"X-API-Key": "nope"}, {"X-API-Key": "sf_live_" + "A" * 40}, {"Authorization": "Basic abc"},
             {"Authorization": "Bearer sf_test_" + "b" * 40}]
    for headers in cases:
        for method, path in (("GET", "/v1/jobs"), ("POST", "/v1/depth-batches"), ("GET", "/v1/usage"),
                             ("GET", "/v1/admin/keys"), ("POST", "/v1/billing/checkout")):
            r = httpx.request(method, f"{api.url}{path}", headers=headers, json={})
            assert r.status_code == 401, (headers, path, r.text)
            assert r.headers["WWW-Authenticate"] == "Bearer"


def test_other_clients_failures_never_lock_out_a_valid_key(make_settings, make_tenant, admin_key):
    """Behind a NAT many clients share one address: a stale client's made-up keys earn its
    address 429s for failing keys only; a tenant's key and the admin key still get through."""
    t = make_tenant("pro")
    server = ServerThread(make_settings(trusted_proxies=["127.0.0.1"], failed_auth_per_ip_per_minute=30)).start()
    address = f"2001:db8::{uuid.uuid4().hex[:4]}:{uuid.uuid4().hex[:4]}"  # RFC 3849, this test's own

    def call(key: str, path: str = "/v1/usage") -> httpx.Response:
        return httpx.get(f"{server.url}{path}", headers={"X-API-Key": key, "X-Forwarded-For": address})

    try:
        fresh_window(30)
        codes = [call("sf_live_" + uuid.uuid4().hex + uuid.uuid4().hex[:8]).status_code for _ in range(100)]
        assert codes == [401] * 30 + [429] * 70, codes
        assert call(t.key).status_code == 200
        assert call(admin_key, f"/v1/admin/keys?tenant={t.id}").status_code == 200
        # Failing keys from that address are still refused, a revoked one included.
        revoked = httpx.post(f"{server.url}/v1/admin/keys", json={"tenant": t.id},
                             headers={"X-API-Key": admin_key}).json()
        assert httpx.delete(f"{server.url}/v1/admin/keys/{revoked['key_id']}",
                            headers={"X-API-Key": admin_key}).status_code == 200
        for key in ("sf_live_" + "Z" * 40, "nope", revoked["key"]):
            r = call(key)
            assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_failed_auth", r.text
            assert 0 < int(r.headers["Retry-After"]) <= 60
        assert call(t.key).status_code == 200
    finally:
        server.stop()


def test_admin_endpoints_need_an_admin_key(make_tenant):
    t = make_tenant("free")
    with t.client() as c:
        for method, path in (("GET", "/v1/admin/keys"), ("POST", "/v1/admin/keys"),
                             ("PUT", f"/v1/admin/tenants/{t.id}/plan"), ("GET", f"/v1/admin/tenants/{t.id}/usage")):
            r = c.request(method, path, json={"tenant": "x", "plan": "pro"})
            assert r.status_code == 403, (path, r.text)


def test_cli_keys_plans_usage(api, make_settings, cluster, monkeypatch):
    import json

    from click.testing import CliRunner

    from spatialforge.apiserver.cli import apiserver_cli
    from spatialforge.crds.constants import ANNOTATION_GPU_LIMIT

    s = make_settings()
    env = {"SPATIALFORGE_API_SECRET_KEY": SECRET_KEY, "SPATIALFORGE_API_REDIS_URL": s.redis_url,
           "SPATIALFORGE_API_KUBECONFIG": s.kubeconfig, "SPATIALFORGE_API_STRIPE_API_KEY": s.stripe_api_key.get_secret_value(),
           "SPATIALFORGE_API_STRIPE_WEBHOOK_SECRET": s.stripe_webhook_secret.get_secret_value(),
           "SPATIALFORGE_API_S3_SECRET_ACCESS_KEY": s.s3_secret_access_key.get_secret_value()}
    runner = CliRunner()
    out = runner.invoke(apiserver_cli, ["keys", "create", "cli-tenant", "--name", "laptop"], env=env)
    assert out.exit_code == 0, out.output
    issued = json.loads(out.output)
    assert httpx.get(f"{api.url}/v1/usage", headers={"X-API-Key": issued["key"]}).status_code == 200

    out = runner.invoke(apiserver_cli, ["keys", "list", "--tenant", "cli-tenant"], env=env)
    assert out.exit_code == 0 and issued["key_id"] in out.output and issued["key"] not in out.output

    out = runner.invoke(apiserver_cli, ["plans", "set", "cli-tenant", "builder", "--gpus", "3"], env=env)
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["gpu_limit"] == 3
    ns = cluster.get("namespace", "sf-cli-tenant", "")
    assert ns["metadata"]["annotations"][ANNOTATION_GPU_LIMIT] == "3"

    out = runner.invoke(apiserver_cli, ["usage", "cli-tenant"], env=env)
    assert out.exit_code == 0 and json.loads(out.output)["plan"] == "builder"

    out = runner.invoke(apiserver_cli, ["keys", "rotate", issued["key_id"]], env=env)
    assert out.exit_code == 0
    out = runner.invoke(apiserver_cli, ["keys", "revoke", json.loads(out.output)["key_id"]], env=env)
    assert out.exit_code == 0 and json.loads(out.output)["revoked"]

    # A placeholder secret refuses, naming the problem.
    bad = runner.invoke(apiserver_cli, ["keys", "list"], env={**env, "SPATIALFORGE_API_SECRET_KEY": "changeme"})
    assert bad.exit_code != 0 and "secret_key" in bad.output


def test_hmac_secret_rotation_keeps_keys_working(api, make_settings):
    """Rotation with a grace period: under (new secret, previous = old) a key issued under the
    old secret still authenticates and is re-hashed under the new one on use, so it keeps
    working once the previous secret is removed; a key never used in the grace period does not."""
    import secrets as pysecrets

    from spatialforge.apiserver.services.tenants import Tenants
    from tests.apiserver.conftest import ServerThread, run

    new_secret = pysecrets.token_urlsafe(48)
    settings = make_settings()
    rc = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    tenant = "rotation-acme"

    async def issue() -> tuple[str, str, str, str]:
        import redis.asyncio as aioredis
        r = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
        try:
            tenants = Tenants(r, settings.hmac_key())  # the old secret: the session's SECRET_KEY
            used, unused, revoked = [await tenants.create_key(tenant) for _ in range(3)]
            await tenants.revoke(revoked.key_id)
            return used.key, used.key_id, unused.key, revoked.key
        finally:
            await r.aclose()

    used, used_id, unused, revoked = run(issue())
    old_digest = hash_key(SECRET_KEY.encode(), used)
    new_digest = hash_key(new_secret.encode(), used)

    during = ServerThread(make_settings(secret_key=new_secret, previous_secret_key=SECRET_KEY)).start()
    try:
        r = httpx.get(f"{during.url}/v1/usage", headers={"X-API-Key": used})
        assert r.status_code == 200 and r.json()["tenant"] == tenant, r.text
        assert not rc.exists(f"apikey:{old_digest}") and rc.hget(f"apikey:{new_digest}", "key_id") == used_id
        assert rc.get(f"keyid:{used_id}") == new_digest
        assert httpx.get(f"{during.url}/v1/usage", headers={"X-API-Key": used}).status_code == 200
        # A key revoked before the rotation stays revoked, and is not re-hashed.
        assert httpx.get(f"{during.url}/v1/usage", headers={"X-API-Key": revoked}).status_code == 401
        assert not rc.exists(f"apikey:{hash_key(new_secret.encode(), revoked)}")
    finally:
        during.stop()

    after = ServerThread(make_settings(secret_key=new_secret)).start()
    try:
        assert httpx.get(f"{after.url}/v1/usage", headers={"X-API-Key": used}).status_code == 200
        r = httpx.get(f"{after.url}/v1/usage", headers={"X-API-Key": unused})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_key"
    finally:
        after.stop()
    # The session's server (old secret only) no longer knows the re-hashed key.
    assert httpx.get(f"{api.url}/v1/usage", headers={"X-API-Key": used}).status_code == 401
