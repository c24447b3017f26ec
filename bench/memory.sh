#!/usr/bin/env bash
# Peak memory of `replicate` while it copies one large file, into a local directory and
# into another cluster's filer. Prints a Markdown table.
#
#   bench/memory.sh [SIZE_MIB] [CHUNK_MIB]      (defaults: 1024 and 4)
#
# Uses the release build and the test bed (real SeaweedFS 4.48 + noida-db on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib="${1:-1024}"
chunk_mib="${2:-4}"

pids=()
bench_stop_own() { for p in "${pids[@]}"; do kill "${p}" 2>/dev/null || true; done; }
# shellcheck source=bench/clusters.sh
source bench/clusters.sh
bin="${repo}/target/release/replicate"
# shellcheck disable=SC1091
env_of() { (source "$1/env"; eval "echo \${$2}"); }
a_http="$(env_of "${run}/a" FILER_HTTP)"
a_grpc="$(env_of "${run}/a" FILER_GRPC)"
a_kafka="$(env_of "${run}/a" KAFKA_ADDR)"
b_grpc="$(env_of "${run}/b" FILER_GRPC)"
b_http="$(env_of "${run}/b" FILER_HTTP)"

head -c "$((size_mib * 1024 * 1024))" /dev/urandom >"${run}/big.bin"
curl -sf -F "file=@${run}/big.bin" "http://${a_http}/data/big.bin?maxMB=${chunk_mib}" >/dev/null
want="$(sha256sum <"${run}/big.bin" | cut -c1-64)"
rm -f "${run}/big.bin"

measure() { # NAME SINK_TOML CHECK_CMD
    local name="$1" sink="$2" check="$3" work="${run}/work-$1"
    mkdir -p "${work}"
    printf '%s\n[source.filer]\ngrpcAddress = "%s"\ndirectory = "/data"\n' "${sink}" "${a_grpc}" >"${work}/replication.toml"
    printf '[notification.kafka]\nenabled = true\nhosts = ["%s"]\ntopic = "seaweedfs_filer"\noffsetFile = "./last.offset"\n' \
        "${a_kafka}" >"${work}/notification.toml"
    local start end pid peak
    start="$(date +%s.%N)"
    (cd "${work}" && exec "${bin}") 2>"${work}/log" &
    pid=$!
    pids+=("${pid}")
    until eval "${check}"; do
        kill -0 "${pid}" 2>/dev/null || { tail "${work}/log" >&2; exit 1; }
        sleep 0.2
    done
    end="$(date +%s.%N)"
    peak="$(awk '/VmHWM/ {print $2}' "/proc/${pid}/status")"
    kill -TERM "${pid}"
    wait "${pid}" || true
    printf '| %s | %s MiB | %s MiB | %d MiB | %s s |\n' "${name}" "${size_mib}" "${chunk_mib}" "$((peak / 1024))" \
        "$(awk -v a="${start}" -v b="${end}" 'BEGIN { printf "%.1f", b - a }')"
}

echo "| sink | file | chunk size | peak RSS | time to replicate |"
echo "|---|---|---|---|---|"
measure local "[sink.local]
enabled = true
directory = \"${run}/local\"" \
    "[[ -f ${run}/local/big.bin ]] && [[ \$(sha256sum <${run}/local/big.bin | cut -c1-64) == ${want} ]]"
measure filer "[sink.filer]
enabled = true
grpcAddress = \"${b_grpc}\"
directory = \"/backup\"" \
    "[[ \$(curl -sf http://${b_http}/backup/big.bin | sha256sum | cut -c1-64) == ${want} ]]"
