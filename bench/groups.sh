#!/usr/bin/env bash
# Scale-out: one Kafka backlog (a 6-partition topic on tansu) drained into a local
# directory by a consumer group of 1, 2 and 3 `replicate` processes. Prints a Markdown
# table (see bench/groups.py).
#
#   bench/groups.sh                 (SMALL=5000 ROUNDS=3 MEMBERS="1 2 3" by default)
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_NAME=groups
export BENCH_CLUSTERS=a BROKER=tansu PARTITIONS="${PARTITIONS:-6}"
bench_stop_own() { pkill -f "${run}" 2>/dev/null || true; }
# shellcheck source=bench/clusters.sh
source bench/clusters.sh
"${python}" bench/groups.py "${run}" "${repo}/target/release/replicate"
