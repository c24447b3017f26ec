#!/usr/bin/env bash
# Backfill and verify timings, printed as a Markdown table: a source tree of SMALL 10 KiB
# files in 20 directories and BIG 20 MiB files in 4 MiB chunks, copied into a local
# directory by `replicate backfill`, then compared by `replicate verify`.
#
#   bench/backfill.sh            (SMALL=2000 BIG=4 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
SMALL="${SMALL:-2000}"; BIG="${BIG:-4}"
cargo build --release --locked --quiet
bin="$(pwd)/target/release/replicate"
run="$(mktemp -d /tmp/bench-backfill.XXXXXX)"
trap 'STOP_GRACE=0 bash scripts/testbed.sh stop "${run}/bed" >/dev/null 2>&1 || true; rm -rf "${run}"' EXIT
bash scripts/testbed.sh install >/dev/null
bash scripts/testbed.sh start "${run}/bed" >/dev/null
# shellcheck disable=SC1091
source "${run}/bed/env"
mkdir -p "${run}/work" "${run}/files"
python3 - "${run}/files" "${SMALL}" "${BIG}" <<'PY'
import os, sys
d, small, big = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(small):
    with open(f"{d}/s{i}", "wb") as f: f.write(os.urandom(10 * 1024))
for i in range(big):
    with open(f"{d}/b{i}", "wb") as f: f.write(os.urandom(20 * 1024 * 1024))
PY
upload() { curl -sf -F "file=@$2" "http://${FILER_HTTP}$1${3:+?$3}" >/dev/null; }
for i in $(seq 0 $((SMALL - 1))); do upload "/data/d$((i % 20))/s${i}" "${run}/files/s${i}"; done
for i in $(seq 0 $((BIG - 1))); do upload "/data/big/b${i}" "${run}/files/b${i}" maxMB=4; done
cat >"${run}/work/replication.toml" <<TOML
[source.filer]
enabled = true
grpcAddress = "${FILER_GRPC}"
directory = "/data"
[sink.local]
enabled = true
directory = "${run}/replica"
TOML
cat >"${run}/work/notification.toml" <<TOML
[notification.kafka]
enabled = true
hosts = ["${KAFKA_ADDR}"]
topic = "${TOPIC}"
TOML
total=$(du -sb "${run}/files" | cut -f1)
t() { local s e; s=$(date +%s.%N); (cd "${run}/work" && "$@" >"${run}/out" 2>/dev/null) || true; e=$(date +%s.%N); python3 -c "print(f'{${e}-${s}:.1f}')"; }
echo "| step | files | MiB | seconds |"
echo "|---|---|---|---|"
mib=$(python3 -c "print(f'{${total}/1048576:.0f}')")
echo "| backfill | $((SMALL + BIG)) | ${mib} | $(t "${bin}" backfill) |"
echo "| verify (SHA-256 of both sides) | $((SMALL + BIG)) | ${mib} | $(t "${bin}" verify) |"
echo "| verify -size-only | $((SMALL + BIG)) | ${mib} | $(t "${bin}" verify -size-only) |"
echo "| backfill again (all present: skipped by size and mtime) | $((SMALL + BIG)) | ${mib} | $(t "${bin}" backfill) |"
tail -1 "${run}/out"
