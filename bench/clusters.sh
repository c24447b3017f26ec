# Sourced by the benchmarks, from the repository root: builds the release binary, installs
# the test bed and starts two clusters in a fresh run directory (A: source and broker, B:
# target; BENCH_CLUSTERS="a" starts A only), stopped and removed on exit. Sets repo, run,
# weed and python. BROKER and PARTITIONS pass on to scripts/testbed.sh. A benchmark that
# starts processes of its own defines bench_stop_own, which runs first on exit.
repo="$(pwd)"
cargo build --release --locked --quiet
paths="$(bash scripts/testbed.sh install)"
weed="$(sed -n 's/^weed=//p' <<<"${paths}")"
python="$(sed -n 's/^python=//p' <<<"${paths}")"
run="$(mktemp -d "/tmp/replicate-${BENCH_NAME:-bench}.XXXXXX")"
bench_cleanup() {
    if declare -F bench_stop_own >/dev/null; then bench_stop_own; fi
    STOP_GRACE=0 bash "${repo}/scripts/testbed.sh" stop "${run}/a" >/dev/null 2>&1 || true
    STOP_GRACE=0 bash "${repo}/scripts/testbed.sh" stop "${run}/b" >/dev/null 2>&1 || true
    rm -rf "${run}"
}
trap bench_cleanup EXIT
for cluster in ${BENCH_CLUSTERS:-a b}; do
    mkdir -p "${run}/${cluster}"
    extra="${WEED_EXTRA_ARGS:-}"
    # WEED_EXTRA_ARGS_B: extra `weed server` flags for B alone (e.g. its profiler).
    if [[ "${cluster}" == b ]]; then extra="${extra} ${WEED_EXTRA_ARGS_B:-}"; fi
    WEED_EXTRA_ARGS="${extra}" bash scripts/testbed.sh start "${run}/${cluster}" >/dev/null
done
