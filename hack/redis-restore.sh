#!/usr/bin/env bash
# Restore the front end's Redis from a backup made by hack/redis-backup.sh, then verify it.
#   hack/redis-restore.sh REDIS_URL FILE
set -euo pipefail
here="$(dirname "${BASH_SOURCE[0]}")"
[[ $# -eq 2 ]] || { echo "usage: $0 REDIS_URL FILE" >&2; exit 2; }
"${here}/redis-backup.sh" restore "$1" "$2"
"${here}/redis-backup.sh" verify "$1" "$2"
