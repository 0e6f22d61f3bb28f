#!/usr/bin/env bash
# Builds the libFuzzer targets of fuzz/ with clang into build-fuzz/ and runs each one for a
# bounded time, starting from its committed seed corpus in fuzz/corpus/<target>/.
#
# Fails when a target finds a crash, a sanitizer (ASan/UBSan/LSan) report, a hang (-timeout),
# an allocation over the memory limit or an exception other than sparsa::Error. The input that
# did it is kept as build-fuzz/artifacts/<target>/crash-* (or timeout-*, oom-*, leak-*); replay
# it with: build-fuzz/fuzz/<target> build-fuzz/artifacts/<target>/crash-...
#
# One exception, fuzz_checkpoint: Debian 12's HDF5 (1.10.8) itself crashes, loops forever or
# leaks on many corrupt files (see fuzz/README.md). Those findings are listed but do not fail the
# run, because nothing in sparsa can fix them; a finding with sparsa code at the top of its
# stack still fails it.
#
#   FUZZ_SECONDS=N        seconds per target (default 30; CI uses 20)
#   FUZZ_TARGETS="a b"    a subset of the targets (default: all five)
#   FUZZ_BUILD_JOBS=N     ninja -j (default: nproc)
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-30}
read -r -a targets <<< "${FUZZ_TARGETS:-fuzz_fastx fuzz_csv fuzz_config fuzz_region fuzz_checkpoint}"

# Own build folder: the fuzz build is clang with -fsanitize=fuzzer and only the parser sources;
# it must never mix with build/ (gcc, Release) or build-asan/.
cmake -S . -B build-fuzz -G Ninja -DSPARSA_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ >/dev/null
ninja -C build-fuzz -j"${FUZZ_BUILD_JOBS:-$(nproc)}" "${targets[@]}"

# The targets write each input to a file (the parsers take paths), and each process makes its
# own folder for that. They go under one fresh folder, removed on exit, which also cleans up
# after processes killed before their own cleanup ran. tmpfs when there is one: htslib calls
# fdatasync when it closes a file it wrote, which on a disk costs more than the parsing.
tmp_base=/tmp
[ -d /dev/shm ] && [ -w /dev/shm ] && tmp_base=/dev/shm
TMPDIR=$(mktemp -d "$tmp_base/sparsa-fuzz.XXXXXX")
export TMPDIR
trap 'rm -rf "$TMPDIR"' EXIT
export UBSAN_OPTIONS=print_stacktrace=1
export ASAN_OPTIONS=detect_leaks=1

# Inputs larger than this are not generated. Text parsers find their bugs in short inputs (and
# run many more of them per second); the checkpoint seeds are ~16-22 KB of HDF5.
max_len() {
  case "$1" in
    fuzz_checkpoint) echo 32768 ;;
    *) echo 4096 ;;
  esac
}

# Reads a sanitizer/libFuzzer report and prints "hdf5" when every stack in it (the crash, and
# where the memory involved was allocated) starts inside libhdf5 once the sanitizer/libFuzzer
# runtime (frames of the fuzzer binary $1 without a source line), libc and libstdc++ are
# skipped; else prints "sparsa". No stack at all (a report that did not reproduce) is sparsa's.
# A libc frame shows either its library (libc.so.6+0x...) or, with glibc's debug info installed,
# its source in glibc's tree (a relative path such as string/../sysdeps/x86_64/...memset...S).
# An out-of-memory report of -rss_limit_mb has no crash stack; it lists the live heap by
# allocation site ("Live Heap Allocations:", largest first), and only the largest site counts:
# that is what grew. The smaller ones are whatever else was alive then (the fuzz target's own
# buffers, sparsa's), and counting them made an HDF5 loop look like sparsa's (CI, 2026-12-02).
stacks_owner() {
  awk -v bin="$1" '
    /Live Heap Allocations:/ { profile = 1; stacks = 0; hdf5 = 0; next }
    profile && /^[0-9]+ byte\(s\) .* allocation\(s\)/ { if (++contexts > 1) exit_profile = 1 }
    exit_profile { next }
    /^ *#0 / { decided = 0 }
    /^ *#[0-9]+ / && !decided {
      if (index($0, "(" bin "+0x") || $0 ~ /libc\.so|libstdc\+\+\.so|libgcc_s\.so|ld-linux/) next
      if ($0 ~ / in [^ ]+ (string|csu|nptl|malloc|stdlib|libio|elf|posix|sysdeps)\/[^ ]*:[0-9]+/) next
      decided = 1
      stacks++
      if ($0 ~ /libhdf5/) hdf5++
    }
    END { print (stacks > 0 && hdf5 == stacks) ? "hdf5" : "sparsa" }'
}

# Replays a finding of target binary $1 ($2), keeps what the replay printed in file $3 and says
# whose it is. -timeout=3: a hang shows where it loops after 3 s as well as after 10, and CI time
# is short.
# A finding that does not reproduce (the replay exits 0 with no report) prints "norepro": fork
# mode sometimes saves the empty input after a child dies of an earlier input's HDF5 damage.
# A hang or a memory blow-up can end differently from one run to the next (the 3 s timeout in
# one, the memory limit in the next, or killed by `timeout 60` with no stack at all). So a replay
# judged sparsa's is run a second time with room for the memory to grow (-rss_limit_mb=8192;
# one allocation over 2 GiB is still reported), where a loop shows as a timeout with its stack;
# the finding is sparsa's only when both replays say so. File $3 keeps the last replay.
classify() {
  local out rc owner attempt
  for attempt in "" "-rss_limit_mb=8192 -malloc_limit_mb=2048"; do
    rc=0
    # shellcheck disable=SC2086  # $attempt is a list of flags
    out=$(timeout 60 "$1" -timeout=3 $attempt "$2" 2>&1) || rc=$?
    printf '%s\n' "$out" >"$3"
    if [ "$rc" -eq 0 ] && ! grep -qE "ERROR: |SUMMARY: |deadly signal" <<<"$out"; then
      owner=norepro
    else
      owner=$(stacks_owner "$(realpath "$1")" <<<"$out")
    fi
    [ "$owner" = sparsa ] || break
  done
  echo "$owner"
}

failed=()
for t in "${targets[@]}"; do
  # New inputs go to build-fuzz/corpus/<t> (kept, so repeated local runs build on earlier
  # ones); the committed seeds are only read. Findings of an earlier run are dropped.
  rm -rf "build-fuzz/artifacts/$t" build-fuzz/logs/"$t".replay-*
  mkdir -p "build-fuzz/corpus/$t" "build-fuzz/artifacts/$t" build-fuzz/logs
  log="build-fuzz/logs/$t.log"
  bin="build-fuzz/fuzz/$t"
  # -rss_limit_mb also sets -malloc_limit_mb: one allocation over 2 GiB is reported as a bug
  # (an input must not make a parser reserve memory out of proportion to its size).
  args=(-max_total_time="$seconds" -max_len="$(max_len "$t")" -rss_limit_mb=2048 -timeout=10
        -artifact_prefix="build-fuzz/artifacts/$t/" -print_final_stats=1)
  if [ "$t" = fuzz_checkpoint ]; then
    # Child processes, so that a finding inside HDF5 is saved and the run goes on.
    args+=(-fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1)
  fi
  echo "[fuzz] $t: ${seconds}s"
  rc=0
  "$bin" "build-fuzz/corpus/$t" "fuzz/corpus/$t" "${args[@]}" >"$log" 2>&1 || rc=$?

  own=0 third_party=0
  for a in "build-fuzz/artifacts/$t"/*; do
    [ -e "$a" ] || continue
    replay="build-fuzz/logs/$t.replay-$(basename "$a")"
    owner=$(classify "$bin" "$a" "$replay")
    if [ "$t" = fuzz_checkpoint ] && [ "$owner" = hdf5 ]; then
      third_party=$((third_party + 1))
    elif [ "$t" = fuzz_checkpoint ] && [ "$owner" = norepro ]; then
      echo "[fuzz] $t: $a does not reproduce on replay (fork-mode artefact); not failing"
      third_party=$((third_party + 1))
    else
      own=$((own + 1))
      # The replay that was classified, not a new one: a hang or a memory blow-up can end
      # differently each time (a timeout in one run, the memory limit in the next).
      echo "[fuzz] $t: FINDING $a; replay (whole: $replay):"
      tail -n 60 "$replay"
    fi
  done
  if [ "$third_party" -gt 0 ]; then
    echo "[fuzz] $t: $third_party finding(s) inside libhdf5 only (HDF5's own bugs on corrupt" \
         "files; not failing): build-fuzz/artifacts/$t/"
  fi
  # A non-zero exit with no finding of ours is still a failure (e.g. the target did not start),
  # unless it came from the HDF5 findings that fork mode skipped past.
  if [ "$own" -gt 0 ] || { [ "$rc" -ne 0 ] && [ "$third_party" -eq 0 ]; }; then
    echo "[fuzz] $t: FAILED (exit $rc; full log: $log); last lines:"
    tail -n 30 "$log"
    failed+=("$t")
  else
    grep -E "^stat::number_of_executed_units|^#[0-9]+: cov" "$log" | tail -n 1 |
      sed "s/^/[fuzz] $t: /"
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "[fuzz] failures in: ${failed[*]} (inputs in build-fuzz/artifacts/)"
  exit 1
fi
echo "[fuzz] all targets ran ${seconds}s without a finding in sparsa code"
