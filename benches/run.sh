#!/usr/bin/env bash
# make bench: the figures quoted in the issues' closing notes. Needs a release build.
# Memory is read from /proc (VmRSS, VmHWM); times from the agent's own log and journal.
set -euo pipefail
cd "$(dirname "$0")/.."
# The static musl binary is what packaging installs; measure it when `make static` built it,
# else the release build (glibc, dynamically linked: its RSS includes the shared libc pages).
if [ -x ./target/static/assistd ] && [ ./target/static/assistd -nt ./target/release/assistd ]; then
  BIN=./target/static/assistd
else
  BIN=./target/release/assistd
fi
echo "measuring $BIN"
WORK=$(mktemp -d /tmp/assistd-bench.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
hwm_kib() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }
wait_log() { # wait_log FILE PATTERN: until the agent logged PATTERN (bounded: 300 s)
  for _ in $(seq 1 3000); do grep -q "$2" "$1" && return 0; sleep 0.1; done
  echo "timed out waiting for '$2' in $1" >&2; return 1
}
ms_now() { date +%s%3N; }

echo "== binary"
for b in ./target/release/assistd ./target/static/assistd ./target/static-local/assistd; do
  [ -x "$b" ] || continue
  how=$(cat "$b.flavour" 2>/dev/null || true) # how build-static.sh built it
  ls -l "$b" | awk -v b="$b" -v how="${how:+ [$how]}" '{printf "%s: %d bytes (%.2f MiB)%s\n", b, $5, $5/1048576, how}'
done

# Idle figures: RSS 3 s after the (empty) task directory was loaded, then the context
# switches of every thread over IDLE_WINDOW seconds (default 30). The local-only static
# binary, the full binary in local mode and, when busybox has crond, busybox crond with an
# empty crontab directory run side by side through the same window.
IDLE_WINDOW=${IDLE_WINDOW:-30}
# Most of an idle agent's RSS is its binary's own pages, and how many of them a fault maps
# depends on the page cache: a file just written (by cp, by the build) sits in large folios,
# and a fault maps the whole folio; a file read from disk (after a boot, or once its pages
# were reclaimed) comes in by readahead, and a fault maps a 64 KiB window. evict drops a
# binary's clean pages from the cache (posix_fadvise DONTNEED: no root needed), so a run
# after it sees the binary as a host does after a boot. The figures below are from that
# state; the full binary is also measured as just written, side by side.
evict() { # evict FILE
  sync "$1"
  python3 -c 'import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)' "$1"
}
WRITTEN=$WORK/assistd-as-written
cp "$BIN" "$WRITTEN"
switches() { # switches PID: voluntary + involuntary context switches of all its threads
  cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/ {n += $2} END {print n + 0}'
}
threads() { awk '/^Threads/ {print $2}' "/proc/$1/status"; }
anon_kib() { awk '/^RssAnon/ {print $2}' "/proc/$1/status"; }
echo "== idle, 0 tasks (RSS after 3 s; wakeups over ${IDLE_WINDOW} s)"
mkdir -p "$WORK/empty"
IDLE_NAMES=() IDLE_PIDS=()
start_idle() { # start_idle NAME BIN
  mkdir -p "$WORK/idle-$1"
  [ "${3:-}" = written ] || evict "$2"
  "$2" agent --local "$WORK/empty" --state-dir "$WORK/idle-$1" 2>"$WORK/idle-$1.log" &
  IDLE_PIDS+=($!) IDLE_NAMES+=("$1")
  wait_log "$WORK/idle-$1.log" "phase=load"
}
[ -x ./target/static-local/assistd ] && start_idle "local-only static" ./target/static-local/assistd
start_idle "full, local mode ($BIN)" "$BIN"
start_idle "full, local mode, just written" "$WRITTEN" written
if command -v busybox >/dev/null 2>&1 && busybox --list 2>/dev/null | grep -qx crond; then
  mkdir -p "$WORK/crontabs"
  busybox crond -f -c "$WORK/crontabs" &
  IDLE_PIDS+=($!) IDLE_NAMES+=("busybox crond")
fi
sleep 3
declare -A RSS0 ANON0 SW0
for i in "${!IDLE_PIDS[@]}"; do
  p=${IDLE_PIDS[$i]}
  RSS0[$i]=$(rss_kib "$p") ANON0[$i]=$(anon_kib "$p") SW0[$i]=$(switches "$p")
done
sleep "$IDLE_WINDOW"
for i in "${!IDLE_PIDS[@]}"; do
  p=${IDLE_PIDS[$i]}
  printf '%s: idle RSS %s KiB (%s KiB anonymous), %s thread(s), %s wakeup(s) in %s s\n' \
    "${IDLE_NAMES[$i]}" "${RSS0[$i]}" "${ANON0[$i]}" "$(threads "$p")" \
    "$(( $(switches "$p") - SW0[$i] ))" "$IDLE_WINDOW"
  kill "$p"; wait "$p" || true
done
# The per-task figure below is measured against the full binary's idle RSS.
mkdir -p "$WORK/s0"
$BIN agent --local "$WORK/empty" --state-dir "$WORK/s0" 2>"$WORK/log0" &
PID=$!
wait_log "$WORK/log0" "phase=load"
sleep 3
R0=$(rss_kib $PID)
kill $PID; wait $PID || true

echo "== 10,000 periodic tasks"
mkdir -p "$WORK/many" "$WORK/s1"
python3 - "$WORK/many" <<'PY'
import json, sys, os
d = sys.argv[1]
for i in range(10000):
    # Never due during the benchmark: 03:30 on 1 January 2099.
    with open(os.path.join(d, f"t{i:05}.json"), "w") as f:
        json.dump({"id": f"t{i:05}", "command": "echo hi", "cron": f"{i%60} 30 3 1 1 ? 2099", "timeout": 60}, f)
PY
T0=$(ms_now)
$BIN agent --local "$WORK/many" --state-dir "$WORK/s1" --log-level info 2>"$WORK/log1" &
PID=$!
wait_log "$WORK/log1" "phase=load"
T1=$(ms_now)
sleep 3
R1=$(rss_kib $PID)
echo "time to load 10,000 tasks (start to scheduled): $((T1 - T0)) ms"
echo "idle RSS with 10,000 periodic tasks: ${R1} KiB"
echo "memory per registered task: $(( (R1 - R0) * 1024 / 10000 )) bytes"
kill $PID; wait $PID || true

echo "== timer lateness"
# Memory per armed schedule and arm/disarm cost at 10,000, 100,000 and 1,000,000 schedules;
# firing lateness at 10,000 and 100,000 (5 s each).
./target/release/examples/bench-timer --seconds 5

echo "== output capture: a child printing 1 GiB"
mkdir -p "$WORK/flood" "$WORK/s2"
echo '{"id":"flood","command":"head -c 1073741824 /dev/zero","timeout":0}' > "$WORK/flood/flood.json"
$BIN agent --local "$WORK/flood" --state-dir "$WORK/s2" 2>"$WORK/log2" &
PID=$!
wait_log "$WORK/log2" "task=flood.*finished"
python3 - "$WORK/s2/journal/journal.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r.get("task") == "flood" and r.get("event") == "finished":
        secs = (r["end"] - r["start"]) / 1000
        print(f"capture: 1 GiB in {secs:.2f} s = {1024/secs:.0f} MiB/s, dropped {r['dropped']} bytes")
PY
echo "agent peak RSS during capture (VmHWM): $(hwm_kib $PID) KiB"
kill $PID; wait $PID || true

echo "== remote mode: kicks over the notify websocket, then the idle connected agent"
# Against the control-plane double on loopback, with $BIN chosen above (the static binary
# when `make static` built it, else the release build). IDLE_SECS shortens the idle period.
evict "$BIN"
./target/release/examples/bench-remote "$BIN" --idle-secs "${IDLE_SECS:-60}"
echo "== remote mode over TLS: HTTPS and wss:// to the double's TLS front, as production always is"
evict "$BIN"
./target/release/examples/bench-remote "$BIN" --iterations 100 --idle-secs "${IDLE_SECS:-60}" --tls |
  grep -E '^(over TLS|kick-to-exec|idle RSS)|anonymous'
echo "== remote mode again, the binary just written (cp): the page cache's other state"
cp "$BIN" "$WRITTEN.2"
./target/release/examples/bench-remote "$WRITTEN.2" --iterations 100 --idle-secs "${IDLE_SECS:-60}" |
  grep -E '^idle RSS|anonymous'
