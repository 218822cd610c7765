#!/usr/bin/env bash
# Runs the GPU suites that tests/gpu/bundle.sh packed into BUNDLE, from the repository's root (the committed
# fixtures), on whatever GPU the Vulkan loader finds: one test at a time, the coop path required where
# REQUIRE_COOP is 1 (the default: a skip fails), the real-width coop block at 1024² (KONTEXT_COOP_1024).
# Prints each suite's result and exits non-zero if any failed.
# Usage: tests/gpu/run.sh BUNDLE
set -uo pipefail
bundle=$1
work=$(mktemp -d)
tar -C "$work" -xJf "$bundle/tiny_types.tar.xz"
export KONTEXT_TINY_TYPES=$work/tiny_types KONTEXT_COOP_1024=1 KONTEXT_MAX_BUFFER_BYTES=${KONTEXT_MAX_BUFFER_BYTES:-134217728}
if [[ ${REQUIRE_COOP:-1} == 1 ]]; then export KONTEXT_REQUIRE_COOP=1; fi
failed=0
for packed in "$bundle"/*.xz; do
  suite=$(basename "$packed" .xz)
  [[ $suite == tiny_types.tar ]] && continue
  xz -dc "$packed" >"$work/$suite" && chmod +x "$work/$suite"
  started=$SECONDS
  "$work/$suite" --test-threads=1 --nocapture 2>&1 | tail -n 40
  status=${PIPESTATUS[0]}
  echo "== $suite: exit $status, $((SECONDS - started)) s"
  [[ $status == 0 ]] || failed=1
done
rm -rf "$work"
exit $failed
