#!/usr/bin/env bash
# The full test suite: unit tests, and integration tests against a real SeaweedFS 4.48 and a
# real Kafka-protocol broker (installed into a cache folder on first use, seconds after that).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/testbed.sh install >/dev/null
# Each integration test starts its own servers; two at a time suits a 2-core machine.
cargo test --locked -- --test-threads=2
