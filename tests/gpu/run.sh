#!/usr/bin/env bash
# Runs the GPU suites of KIT (the check/ kit of tests/gpu/bundle.sh) from the repository's root (the committed
# fixtures), on whatever GPU the Vulkan loader finds: one test at a time, the coop path required where REQUIRE_COOP
# is 1 (the default: a skip fails), the real-width coop block at 1024² (KONTEXT_COOP_1024). With LEASE_UNTIL (seconds
# since 1970), no suite runs past that time. With GPU_DRY_RUN set (a try of the kit without a GPU), the block at
# 256², and the suites on Mesa 26's lavapipe where KONTEXT_COOP_ROOT names its root (tests/coop/run.sh).
# Prints each suite's output and result; exits non-zero if any failed.
# Usage: tests/gpu/run.sh KIT
set -uo pipefail
kit=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar -C "$work" -xJf "$kit/tiny_types.tar.xz"
tar -C "$work" -xJf "$kit/suites.tar.xz"
export KONTEXT_TINY_TYPES=$work/tiny_types KONTEXT_MAX_BUFFER_BYTES=${KONTEXT_MAX_BUFFER_BYTES:-134217728}
if [[ ${REQUIRE_COOP:-1} == 1 ]]; then export KONTEXT_REQUIRE_COOP=1; fi
runner=()
if [[ -z ${GPU_DRY_RUN:-} ]]; then
  export KONTEXT_COOP_1024=1
elif [[ -n ${KONTEXT_COOP_ROOT:-} ]]; then
  runner=(bash tests/coop/run.sh "$KONTEXT_COOP_ROOT")
fi
failed=0
for suite in $(tar -tJf "$kit/suites.tar.xz"); do
  limit=()
  if [[ -n ${LEASE_UNTIL:-} ]]; then
    left=$((LEASE_UNTIL - $(date +%s)))
    if ((left < 20)); then
      echo "== $suite: skipped, ${left} s left"
      failed=1
      continue
    fi
    limit=(timeout "$left")
  fi
  started=$SECONDS
  "${limit[@]}" "${runner[@]}" "$work/$suite" --test-threads=1 --nocapture 2>&1
  status=$?
  echo "== $suite: exit $status, $((SECONDS - started)) s"
  [[ $status == 0 ]] || failed=1
done
exit $failed
