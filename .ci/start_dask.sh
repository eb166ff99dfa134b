#!/usr/bin/env bash
# Starts a Dask scheduler and two single-threaded workers on loopback for the `kd plan` cluster test
# (tests/test_plan_run.py) and prints their address; kd must be importable by the workers (install it
# first). Stop them with: kill $KD_TEST_DASK_PIDS
# Usage: eval "$(bash .ci/start_dask.sh [PORT])"  -> exports KD_TEST_DASK_ADDRESS, KD_TEST_DASK_PIDS
set -euo pipefail
port="${1:-58786}"
# Skip ports something already listens on.
while (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
address="tcp://127.0.0.1:$port"
logs=$(mktemp -d /tmp/kd-dask.XXXXXX)
# Output to files: the backgrounded processes must not hold the stdout this script's caller reads.
python -m distributed.cli.dask_scheduler --host 127.0.0.1 --port "$port" --no-dashboard \
  >"$logs/scheduler.log" 2>&1 </dev/null &
pids=$!
for worker in 1 2; do
  python -m distributed.cli.dask_worker "$address" --name "ci-$worker" --nworkers 1 --nthreads 1 --no-dashboard \
    >"$logs/worker-$worker.log" 2>&1 </dev/null &
  pids="$pids $!"
done
python - "$address" <<'PY' 1>&2
import sys
from distributed import Client

with Client(sys.argv[1], timeout=60) as client:
    client.wait_for_workers(2, timeout=120)
PY
echo "export KD_TEST_DASK_ADDRESS=$address"
echo "export KD_TEST_DASK_PIDS='$pids'"
echo "export KD_TEST_DASK_LOGS=$logs"
