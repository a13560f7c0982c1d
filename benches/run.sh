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
for b in ./target/release/assistd ./target/static/assistd; do
  [ -x "$b" ] && ls -l "$b" | awk -v b="$b" '{printf "%s: %d bytes (%.2f MiB)\n", b, $5, $5/1048576}'
done

echo "== idle RSS, 0 tasks"
mkdir -p "$WORK/empty" "$WORK/s0"
$BIN agent --local "$WORK/empty" --state-dir "$WORK/s0" 2>"$WORK/log0" &
PID=$!
wait_log "$WORK/log0" "phase=load"
sleep 2
R0=$(rss_kib $PID)
echo "idle RSS with 0 tasks: ${R0} KiB"
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
sleep 2
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
./target/release/examples/bench-remote "$BIN" --idle-secs "${IDLE_SECS:-60}"
