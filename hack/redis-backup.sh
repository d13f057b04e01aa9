#!/usr/bin/env bash
# Back up and restore the front end's Redis (API keys, plans, quotas, usage) key by key, over
# the network, so it works against any Redis the chart points at (managed or the trial one).
#
#   hack/redis-backup.sh backup  REDIS_URL FILE   every key of the URL's database: DUMP + TTL
#   hack/redis-backup.sh restore REDIS_URL FILE   RESTORE ... REPLACE each key (keeps TTLs)
#   hack/redis-backup.sh verify  REDIS_URL FILE   exit 1 unless the database equals the backup
#   hack/redis-backup.sh selftest                 back up, wipe and restore a local redis-server
#                                                 (Debian's /usr/bin/redis-server) and prove
#                                                 nothing was lost
#
# FILE is JSON lines: a header, then {"key", "ttl_ms", "dump"} with base64 payloads. It holds
# secrets (API-key hashes, Stripe ids): store it encrypted (docs/operations.md). The payload
# format is Redis's DUMP format: restore into the same or a newer Redis major version.
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PYTHON="${PYTHON:-python3}"
REDIS_SERVER="${REDIS_SERVER:-/usr/bin/redis-server}"

redis_py() {
  "${PYTHON}" - "$@" <<'PY'
import base64, json, sys, time
import redis

def connect(url):
    r = redis.Redis.from_url(url)
    r.ping()
    return r

def backup(url, path):
    r, n = connect(url), 0
    with open(path + ".part", "w") as f:
        f.write(json.dumps({"format": "spatialforge-redis-backup/1", "created": time.time(),
                            "redis_version": r.info("server")["redis_version"], "dbsize": r.dbsize()}) + "\n")
        for key in r.scan_iter(count=1000):
            payload, ttl = r.dump(key), r.pttl(key)
            if payload is None:  # expired or deleted while scanning
                continue
            f.write(json.dumps({"key": base64.b64encode(key).decode(), "ttl_ms": max(ttl, 0),
                                "dump": base64.b64encode(payload).decode()}) + "\n")
            n += 1
    import os
    os.replace(path + ".part", path)
    print(f"backed up {n} keys to {path}", file=sys.stderr)

def entries(path):
    with open(path) as f:
        header = json.loads(f.readline())
        if header.get("format") != "spatialforge-redis-backup/1":
            sys.exit(f"{path}: not a spatialforge Redis backup")
        for line in f:
            e = json.loads(line)
            yield base64.b64decode(e["key"]), e["ttl_ms"], base64.b64decode(e["dump"])

def restore(url, path):
    r, n = connect(url), 0
    pipe = r.pipeline(transaction=False)
    for key, ttl, payload in entries(path):
        pipe.restore(key, ttl, payload, replace=True)
        n += 1
        if n % 1000 == 0:
            pipe.execute()
    pipe.execute()
    print(f"restored {n} keys from {path}", file=sys.stderr)

def verify(url, path):
    r, want, bad = connect(url), 0, []
    for key, ttl, payload in entries(path):
        want += 1
        scratch = b"__spatialforge_verify__"
        r.restore(scratch, 0, payload, replace=True)  # compare values, not encodings
        if r.type(key) != r.type(scratch) or not same(r, key, scratch):
            bad.append(key)
        if ttl and r.pttl(key) <= 0:
            bad.append(key)
        r.delete(scratch)
    have = r.dbsize()
    if bad or have != want:
        sys.exit(f"verify failed: {len(bad)} keys differ (e.g. {bad[:3]}), {have} keys in Redis, {want} in backup")
    print(f"verified {want} keys against {path}", file=sys.stderr)

def same(r, a, b):
    t = r.type(a)
    read = {b"string": r.get, b"hash": r.hgetall, b"set": r.smembers,
            b"list": lambda k: r.lrange(k, 0, -1), b"zset": lambda k: r.zrange(k, 0, -1, withscores=True),
            b"stream": lambda k: r.xrange(k)}.get(t)
    return read is not None and read(a) == read(b)

def seed(url):
    """Every type the front end uses, with and without TTLs, binary keys and values."""
    r = connect(url)
    for i in range(500):
        r.hset(f"apikey:{i:04d}", mapping={"tenant": f"t{i % 7}", "plan": "pro", "hash": bytes(range(i % 256))})
    r.set("plan:pro", json.dumps({"gpuSeconds": 36000, "rate": 10}))
    r.set("ratelimit:t1", 5, px=3_600_000)
    r.sadd("tenants", *[f"t{i}" for i in range(7)])
    r.zadd("usage:2026-11", {f"t{i}": i * 1.5 for i in range(7)})
    r.rpush("webhooks:pending", *[f"evt{i}" for i in range(20)])
    r.xadd("events", {"kind": "DepthBatch", "name": "a"})
    r.set(b"\x00binary\xff", b"\xff\x00")
    print(f"seeded {r.dbsize()} keys", file=sys.stderr)

def flushed(url):
    r = connect(url)
    r.flushall()
    assert r.dbsize() == 0

{"backup": backup, "restore": restore, "verify": verify, "seed": seed, "flush": flushed}[sys.argv[1]](*sys.argv[2:])
PY
}

redis_selftest() {
  [[ -x ${REDIS_SERVER} ]] || log_fatal "redis-server not found at ${REDIS_SERVER} (apt-get install redis-server)"
  local port url
  # Globals, not locals: the EXIT trap runs after this function has returned.
  SELFTEST_DIR="$(mktemp -d)"
  SELFTEST_PID=""
  local dir=${SELFTEST_DIR}
  port="$(free_port)"
  url="redis://127.0.0.1:${port}/0"
  # shellcheck disable=SC2317  # called through the trap
  selftest_cleanup() {
    if [[ -n ${SELFTEST_PID} ]]; then kill "${SELFTEST_PID}" 2>/dev/null || true; fi
    rm -rf "${SELFTEST_DIR}"
  }
  trap selftest_cleanup EXIT
  start() {
    "${REDIS_SERVER}" --port "${port}" --bind 127.0.0.1 --dir "${dir}/data" --save "" --appendonly no \
      --daemonize no >"${dir}/redis.log" 2>&1 &
    SELFTEST_PID=$!
    wait_for_port 127.0.0.1 "${port}" 10 redis-server
  }
  mkdir -p "${dir}/data"
  start
  redis_py seed "${url}"
  redis_py backup "${url}" "${dir}/backup.jsonl"
  redis_py verify "${url}" "${dir}/backup.jsonl"
  # Wipe: stop the server, delete its data, start an empty one.
  kill "${SELFTEST_PID}"; wait "${SELFTEST_PID}" 2>/dev/null || true
  rm -rf "${dir}/data"; mkdir -p "${dir}/data"
  start
  if redis_py verify "${url}" "${dir}/backup.jsonl" 2>/dev/null; then
    log_fatal "selftest broken: an empty Redis verified against the backup"
  fi
  redis_py restore "${url}" "${dir}/backup.jsonl"
  redis_py verify "${url}" "${dir}/backup.jsonl"
  log_info "selftest passed: backup, wipe, restore lost nothing"
}

main() {
  local cmd=${1:-}
  case ${cmd} in
    backup|restore|verify)
      [[ $# -eq 3 ]] || log_fatal "usage: $0 ${cmd} REDIS_URL FILE"
      redis_py "${cmd}" "$2" "$3" ;;
    selftest) redis_selftest ;;
    -h|--help|"") sed -n '2,15p' "${BASH_SOURCE[0]}" ;;
    *) log_fatal "unknown command '${cmd}' (backup, restore, verify, selftest)" ;;
  esac
}

main "$@"
