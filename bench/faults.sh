#!/usr/bin/env bash
# The randomized fault harness (tests/fault_harness.rs) for as long as asked: ROUNDS
# seeds from FIRST_SEED, each through every profile (or PROFILE only), against the real
# test bed, two profiles at a time (a test each). Prints one line per round and the seed
# and profile of every failure; the exit status is non-zero if any round failed. Keep a
# failing seed in CI_SEEDS there.
#
#   bench/faults.sh                       (ROUNDS=40 FIRST_SEED=1000: 200 rounds)
#   ROUNDS=5 PROFILE=kafka-filer bench/faults.sh
#   SEEDS=1042,1077 bench/faults.sh       (just these)
#   BUILD=debug bench/faults.sh           (the test build instead of a release build)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/testbed.sh install >/dev/null
export HARNESS_ROUNDS="${ROUNDS:-40}" HARNESS_FIRST_SEED="${FIRST_SEED:-1000}"
[[ -n "${PROFILE:-}" ]] && export HARNESS_PROFILE="${PROFILE}"
[[ -n "${SEEDS:-}" ]] && export HARNESS_SEEDS="${SEEDS}"
started=$(date +%s)
set +e
release=(--release)
[[ "${BUILD:-release}" == debug ]] && release=()
cargo test "${release[@]}" --locked --test fault_harness -- --nocapture 2>&1 | grep --line-buffered -E '^harness:'
status=${PIPESTATUS[0]}
set -e
echo "faults: $(( $(date +%s) - started )) s in all"
exit "${status}"
