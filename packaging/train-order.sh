#!/bin/sh
# Writes a symbol ordering file for the linker: the functions a static assistd runs while it
# starts, runs tasks and idles, one mangled name a line. build-static.sh links the shipped
# binary with it (lld's --symbol-ordering-file), so that code sits together at the front of
# .text and everything the agent never runs (the CLI tools, error paths, session and update
# code until they are used) sits behind it.
#
# Why it matters: the kernel maps a binary's text in 64 KiB fault-around windows, so in the
# default layout, where hot and cold functions are interleaved, nearly the whole .text of an
# idle agent is resident although it ran only ~300 KB of it (README "The static binary").
#
#   packaging/train-order.sh BINARY ORDER_FILE [BENCH_REMOTE]
#
# BINARY must have its symbol table (not stripped). The scenarios run it under valgrind's
# callgrind, which records every function that executed; its children (sh, the tasks) run
# natively:
#   - local mode: a task directory with a task run at start, a rate task, a task killed at
#     its timeout and one with a bad schedule; a SIGHUP (reload); SIGTERM.
#   - remote mode, when BENCH_REMOTE (target/release/examples/bench-remote) is given: the
#     bench's kicks and its idle period against the loopback control-plane double, once in
#     plain HTTP and once over TLS (`--tls`: HTTPS and wss:// through the double's TLS front,
#     as production always is). The idle period (20 s) covers a heartbeat and a keepalive
#     of the kick channel.
# Only the set of functions matters, not their order within it. The slow paths of locks and
# channels are added whole from the symbol table: contention is what valgrind's one thread
# at a time rarely produces. So are ring's functions: which of them run depends on the CPU
# and the server's certificate. A function the training misses still works: its page is
# faulted in when it first runs. Exits non-zero (and writes nothing) when valgrind is
# missing or a scenario produced no profile.
set -eu

[ $# -ge 2 ] || { echo "usage: $0 BINARY ORDER_FILE [BENCH_REMOTE]" >&2; exit 2; }
bin=$1
out=$2
driver=${3:-}
case $bin in /*) ;; *) bin=$PWD/$bin ;; esac
case $driver in /* | "") ;; *) driver=$PWD/$driver ;; esac
say() { printf 'train-order: %s\n' "$*"; }
command -v valgrind >/dev/null 2>&1 || { say "valgrind is not installed"; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/assistd-train.XXXXXX")
agent_pid=
cleanup() {
    [ -n "$agent_pid" ] && kill -9 "$agent_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

# The agent under callgrind, as an executable the remote driver can start like the agent.
cat >"$work/agent" <<EOF
#!/bin/sh
exec valgrind --tool=callgrind --demangle=no --callgrind-out-file="$work/cg.%p" \\
    --log-file="$work/valgrind.%p.log" "$bin" "\$@"
EOF
chmod 755 "$work/agent"

# stop_agent PID: SIGTERM, then up to 60 s for callgrind to write its profile.
stop_agent() {
    kill -TERM "$1" 2>/dev/null || true
    i=0
    while kill -0 "$1" 2>/dev/null && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
    kill -9 "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

say "local mode under callgrind"
mkdir -p "$work/tasks" "$work/state-local"
printf '%s\n' '{"id":"at-start","command":"echo started; id -un"}' >"$work/tasks/at-start.json"
printf '%s\n' '{"id":"every-2s","command":"date","cron":"rate(2s)","timeout":10}' >"$work/tasks/every-2s.json"
printf '%s\n' '{"id":"times-out","command":"echo a; sleep 30","cron":"rate(4s)","timeout":1}' >"$work/tasks/times-out.json"
printf '%s\n' '{"id":"bad-cron","command":"true","cron":"61 * * * * ?"}' >"$work/tasks/bad-cron.json"
chmod 700 "$work/tasks"
chmod 600 "$work/tasks"/*.json
"$work/agent" agent --local "$work/tasks" --state-dir "$work/state-local" 2>"$work/local.log" &
agent_pid=$!
sleep 12
kill -HUP "$agent_pid" 2>/dev/null || true
sleep 4
stop_agent "$agent_pid"
agent_pid=

if [ -n "$driver" ]; then
    for tls in "" --tls; do
        say "remote mode${tls:+ over TLS} under callgrind ($driver)"
        "$driver" "$work/agent" --iterations 100 --idle-secs 20 $tls >"$work/remote.log" 2>&1 ||
            { say "the remote scenario failed (its log follows)"; cat "$work/remote.log" >&2; exit 1; }
    done
fi

set -- "$work"/cg.*
[ -f "$1" ] || { say "callgrind wrote no profile"; cat "$work"/valgrind.*.log >&2 2>/dev/null; exit 1; }
# Every function that executed: `fn=(id) name` defines a name (later lines repeat only the
# id), and `cfn=` lines may define names too. Callgrind marks recursion levels with 'N.
awk '
FNR == 1 { delete names }
/^c?fn=\(/ {
    rest = substr($0, index($0, "(") + 1)
    id = substr(rest, 1, index(rest, ")") - 1)
    name = substr(rest, index(rest, ")") + 2)
    if (name != "") names[id] = name
    if ($0 ~ /^fn=/ && (id in names)) {
        s = names[id]
        sub(/'"'"'[0-9]+$/, "", s)
        if (s !~ /^(0x|\()/ && !(s in seen)) { seen[s] = 1; print s }
    }
}' "$@" >"$work/order"
# Code that runs natively but seldom under valgrind, which runs one thread at a time: the
# slow paths of locks and channels (contention, parking). All of it goes in, from the
# binary's own symbol table (v0 names carry the crate: 16parking_lot_core, ...).
if command -v nm >/dev/null 2>&1; then
    # ring's C and assembly too (`ring_core_*`, ~72 KB once ChaCha is gone: remote::tls_policy):
    # ring picks its code by CPU feature at run time (SHA extensions, ADX, VAES, which the
    # emulated CPU lacks) and by the server's key (RSA in production, ECDSA in training), so
    # what a real agent runs of it is not what valgrind saw.
    nm "$bin" | awk '$2 ~ /^[tTwW]$/ && ($3 ~ /(16parking_lot_core|17crossbeam_channel|15crossbeam_utils)/ || $3 ~ /^ring_core_/) { print $3 }' |
        awk 'NR == FNR { seen[$0] = 1; next } !($0 in seen) { seen[$0] = 1; print }' "$work/order" - >>"$work/order"
fi
n=$(wc -l <"$work/order" | tr -d ' ')
[ "$n" -gt 0 ] || { say "no functions in the profiles"; exit 1; }
mv -f "$work/order" "$out"
say "$n functions -> $out"
