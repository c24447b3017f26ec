#!/usr/bin/env bash
# Demo: a throwaway SeaweedFS + Kafka-protocol broker, `replicate` run in a directory of
# upstream-format config files, a few changes made on the filer, and the replicated tree
# printed beside the source. Everything is stopped and removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"
for tool in curl python3 sha256sum; do
    command -v "${tool}" >/dev/null || { echo "demo needs ${tool} (e.g. apt-get install curl)" >&2; exit 1; }
done

# REPLICATE_BIN: use this binary instead of building one (the test suite runs the demo
# with the binary it built).
if [[ -n "${REPLICATE_BIN:-}" ]]; then
    bin="${REPLICATE_BIN}"
else
    echo "== building replicate"
    cargo build --locked --quiet
    bin="${repo}/target/debug/replicate"
fi

echo "== starting a throwaway SeaweedFS (master+volume+filer) publishing to a Kafka broker"
run="$(mktemp -d /tmp/replicate-demo.XXXXXX)"
cleanup() {
    if [[ -n "${rep_pid:-}" ]]; then
        kill "${rep_pid}" 2>/dev/null || true
        wait "${rep_pid}" 2>/dev/null || true
    fi
    STOP_GRACE=0 bash "${repo}/scripts/testbed.sh" stop "${run}/bed" >/dev/null 2>&1 || true
    rm -rf "${run}"
}
trap cleanup EXIT
bash scripts/testbed.sh install >/dev/null
mkdir -p "${run}/bed" "${run}/work"
bash scripts/testbed.sh start "${run}/bed" >/dev/null
# shellcheck disable=SC1091
source "${run}/bed/env"
filer="http://${FILER_HTTP}"

echo "== writing replication.toml and notification.toml (upstream format) in ${run}/work"
cat >"${run}/work/replication.toml" <<TOML
[source.filer]
enabled = true
grpcAddress = "${FILER_GRPC}"
directory = "/data"
excludeDirectories = "/data/tmp"

[sink.local]
enabled = true
directory = "${run}/replica"
TOML
cat >"${run}/work/notification.toml" <<TOML
[notification.kafka]
enabled = true
hosts = ["${KAFKA_ADDR}"]
topic = "${TOPIC}"
offsetFile = "./last.offset"
offsetSaveIntervalSeconds = 1
TOML

echo "== making changes on the source filer"
upload() { curl -sf -F "file=@$2" "${filer}$1${3:+?$3}" >/dev/null; }
echo "hello from the source cluster" >"${run}/hello.txt"
head -c 5000000 /dev/urandom >"${run}/big.bin"
upload /data/docs/hello.txt "${run}/hello.txt"
upload /data/media/big.bin "${run}/big.bin" maxMB=1
upload /data/tmp/scratch.txt "${run}/hello.txt"
upload /data/docs/draft.txt "${run}/hello.txt"

metrics_port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
echo "== starting: replicate -metrics.address=127.0.0.1:${metrics_port} (in ${run}/work)"
(cd "${run}/work" && exec "${bin}" -metrics.address="127.0.0.1:${metrics_port}") 2>"${run}/replicate.log" &
rep_pid=$!

curl -sf -X POST "${filer}/data/docs/final.txt?mv.from=/data/docs/draft.txt" >/dev/null
curl -sf -X POST "${filer}/data/archive?mv.from=/data/media" >/dev/null
curl -sf -X DELETE "${filer}/data/docs/hello.txt" >/dev/null

want="archive/big.bin docs/final.txt"
for _ in $(seq 1 100); do
    ok=1
    for f in ${want}; do [[ -f "${run}/replica/${f}" ]] || ok=0; done
    [[ -e "${run}/replica/docs/hello.txt" || -e "${run}/replica/media" ]] && ok=0
    ((ok)) && break
    sleep 0.2
done

echo
echo "== source (/data on the filer)            sha256"
for f in docs/final.txt archive/big.bin; do
    printf '   %-38s %s\n' "/data/${f}" "$(curl -sf "${filer}/data/${f}" | sha256sum | cut -c1-16)"
done
echo "== replica (${run}/replica)"
(cd "${run}/replica" && find . -type f | sort | while read -r f; do
    printf '   %-38s %s\n' "${f#./}" "$(sha256sum "${f}" | cut -c1-16)"
done)
echo "   (docs/hello.txt deleted, media/ renamed to archive/, tmp/ excluded)"

echo
echo "== metrics (curl http://127.0.0.1:${metrics_port}/metrics, events and bytes)"
curl -sf "http://127.0.0.1:${metrics_port}/metrics" | grep -E '^replicate_(events_total|copied_bytes_total|kafka_partition_lag)' | sed 's/^/   /'
echo "== readiness (curl http://127.0.0.1:${metrics_port}/readyz)"
curl -s "http://127.0.0.1:${metrics_port}/readyz" | sed 's/^/   /'

echo
echo "== replicate verify: the source tree against the replica, by size and SHA-256"
(cd "${run}/work" && "${bin}" verify 2>/dev/null) | sed 's/^/   /'

kill -TERM "${rep_pid}"
status=0
wait "${rep_pid}" || status=$?
rep_pid=""
if ((status != 0)); then
    echo "== replicate exited with status ${status}; its log:" >&2
    tail -20 "${run}/replicate.log" >&2
    exit 1
fi
echo "== replicate stopped cleanly (exit 0); offsets: $(cat "${run}/work/last.offset")"
