#!/usr/bin/env bash
# A short libFuzzer run of each built fuzz target, two at a time (one per core), from its committed corpus: new
# inputs go to a scratch folder, a finding to tests/fuzz/artifacts/<target>/, and any finding fails the run.
# Usage: tests/fuzz/smoke.sh BIN_DIR SECONDS TARGET... (libFuzzer flags in LIBFUZZER_FLAGS).
set -euo pipefail
bin_dir=$1 seconds=$2
shift 2

smoke() {
  local target=$1 scratch status=0
  scratch=$(mktemp -d)
  mkdir -p "tests/fuzz/artifacts/$target"
  # shellcheck disable=SC2086 # LIBFUZZER_FLAGS is a list of flags
  "$bin_dir/$target" "$scratch" "tests/fuzz/corpus/$target" -artifact_prefix="tests/fuzz/artifacts/$target/" \
    ${LIBFUZZER_FLAGS:-} -max_total_time="$seconds" -print_final_stats=1 >"$scratch.log" 2>&1 || status=$?
  { grep -E '^(Done|stat::number_of_executed_units)|panicked|ERROR|SUMMARY|artifact' "$scratch.log" || true; } |
    sed "s/^/$target: /"
  [ "$status" -eq 0 ] || tail -n 5 "$scratch.log" | sed "s/^/$target: /"
  rm -rf "$scratch" "$scratch.log"
  [ "$status" -eq 0 ] || echo "$target: the fuzzer exited with $status"
  return "$status"
}

running=() failed=0
for target in "$@"; do
  smoke "$target" &
  running+=($!)
  if [ ${#running[@]} -eq 2 ]; then
    wait "${running[0]}" || failed=1
    running=("${running[@]:1}")
  fi
done
for pid in "${running[@]}"; do
  wait "$pid" || failed=1
done
exit "$failed"
