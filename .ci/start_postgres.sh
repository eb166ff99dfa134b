#!/usr/bin/env bash
# Starts a throwaway PostgreSQL server on loopback for the distributed-tuning tests and prints
# its base URL (postgresql://kd@127.0.0.1:PORT). Installs Debian's package when it is missing.
# Usage: eval "$(bash .ci/start_postgres.sh [PORT])"  -> exports KD_TEST_POSTGRES_URL
set -euo pipefail
port="${1:-55432}"
# Skip ports something already listens on.
while (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  (apt-get update -qq && apt-get install -y -qq postgresql >/dev/null) 1>&2
fi
bin=$(dirname "$(ls -d /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)")
data=$(mktemp -d /tmp/kd-pg.XXXXXX)
run_as() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/bash -c "$*"; else bash -c "$*"; fi; }
[ "$(id -u)" = 0 ] && chown postgres "$data"
run_as "'$bin/initdb' -D '$data' -U kd --auth=trust" >/dev/null
run_as "'$bin/pg_ctl' -D '$data' -l '$data/server.log' -w -o \"-p $port -c listen_addresses=127.0.0.1 -k '$data' -c max_connections=200\" start" >/dev/null
for database in kd_optuna kd_mlflow; do
  run_as "'$bin/createdb' -h 127.0.0.1 -p $port -U kd $database"
done
echo "export KD_TEST_POSTGRES_URL=postgresql://kd@127.0.0.1:$port"
echo "export KD_TEST_POSTGRES_DATA=$data"
