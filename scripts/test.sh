#!/usr/bin/env bash
# The whole test suite: unit, property, crash and (later) end-to-end tests. The README's test
# command and .ci/run both run exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo test --workspace "$@"
