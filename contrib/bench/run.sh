#!/usr/bin/env bash
# pgcorral benchmark: pgbench through pgcorral, pgbouncer and directly against
# PostgreSQL, interleaved, with CPU and memory of both poolers.
#
#   bash contrib/bench/run.sh                         # 3 rounds of 15 s per cell
#   bash contrib/bench/run.sh --quick                 # 1 round of 5 s (development)
#   bash contrib/bench/run.sh --rounds 5 --duration 30
#   PGCORRAL_BIN=/path/to/pgcorral bash contrib/bench/run.sh   # skip the build
#   (PGCORRAL_VERSION="..." then names that binary in the output)
#
# Options:
#   --rounds N        rounds (default 3)
#   --duration S      seconds per pgbench run (default 15)
#   --quick           --rounds 1 --duration 5
#   --modes LIST      pooling modes, comma separated (default session,transaction;
#                     also: performance = pgcorral's performance pipeline against
#                     pgbouncer session mode without a reset query)
#   --workloads LIST  only these workloads (names as in the table, e.g. select-c10-simple)
#   --results DIR     where to keep the results (default /tmp/pgcorral-bench-<time>)
#   --no-memory       skip the 100-idle-clients memory measurement
#   --serve           start everything, print the ports and wait for Ctrl-C
#                     (for profiling: run perf or pgbench by hand meanwhile)
#
# Everything it starts (PostgreSQL in a temporary directory, pgbouncer,
# pgcorral) is stopped again on exit, Ctrl-C or failure. Needs PostgreSQL's
# server programs, pgbench, psql and pgbouncer; installs the Debian packages
# when one is missing. As root, PostgreSQL and pgbouncer run as user postgres.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
helper=("python3" "$here/bench.py")

rounds=3
duration=15
modes="session,transaction"
only_workloads=""
results=""
memory=yes
serve=""
jobs=2
session_pool=100
transaction_pool=20
idle_clients=100

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) rounds="$2"; shift 2 ;;
        --duration) duration="$2"; shift 2 ;;
        --quick) rounds=1; duration=5; shift ;;
        --modes) modes="$2"; shift 2 ;;
        --workloads) only_workloads="$2"; shift 2 ;;
        --results) results="$2"; shift 2 ;;
        --no-memory) memory=""; shift ;;
        --serve) serve=yes; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "run.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done
case "$rounds$duration" in *[!0-9]*) echo "run.sh: --rounds and --duration take integers" >&2; exit 2 ;; esac
IFS=, read -r -a mode_list <<<"$modes"
for m in "${mode_list[@]}"; do
    case "$m" in session|transaction|performance) ;; *) echo "run.sh: unknown mode $m" >&2; exit 2 ;; esac
done

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# ---------------------------------------------------------------- programs

sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi

pg_program() {
    local found
    found="$(compgen -G "/usr/lib/postgresql/*/bin/$1" | sort -V | tail -n 1 || true)"
    if [ -z "$found" ]; then
        found="$(command -v "$1" || true)"
    fi
    printf '%s' "$found"
}

missing=()
for p in initdb pg_ctl postgres pgbench psql; do
    [ -n "$(pg_program "$p")" ] || missing+=(postgresql postgresql-contrib postgresql-client)
done
pgbouncer_bin="$(command -v pgbouncer || true)"
[ -n "$pgbouncer_bin" ] || [ ! -x /usr/sbin/pgbouncer ] || pgbouncer_bin=/usr/sbin/pgbouncer
[ -n "$pgbouncer_bin" ] || missing+=(pgbouncer)
if [ ${#missing[@]} -gt 0 ]; then
    log "installing from Debian's packages: $(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')"
    $sudo apt-get update
    # shellcheck disable=SC2046
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        $(printf '%s\n' "${missing[@]}" | sort -u)
    pgbouncer_bin="$(command -v pgbouncer || echo /usr/sbin/pgbouncer)"
fi
initdb_bin="$(pg_program initdb)"
pg_ctl_bin="$(pg_program pg_ctl)"
postgres_bin="$(pg_program postgres)"
pgbench_bin="$(pg_program pgbench)"
psql_bin="$(pg_program psql)"

if [ -n "${PGCORRAL_BIN:-}" ]; then
    pgcorral_bin="$PGCORRAL_BIN"
else
    log "building pgcorral (cargo build --release)"
    (cd "$repo" && cargo build --release --bin pgcorral)
    pgcorral_bin="${CARGO_TARGET_DIR:-$repo/target}/release/pgcorral"
fi
[ -x "$pgcorral_bin" ] || { echo "run.sh: no pgcorral binary at $pgcorral_bin" >&2; exit 1; }

# ---------------------------------------------------------------- workloads

# name | pgbench arguments | clients | allowed in transaction mode (1/0)
workloads=(
    "select-c10-simple|-S -M simple -c 10|10|1"
    "select-c10-prepared|-S -M prepared -c 10|10|0"
    "select-c100-simple|-S -M simple -c 100|100|1"
    "select-c100-prepared|-S -M prepared -c 100|100|0"
    "tpcb-c10-simple|-M simple -c 10|10|1"
    "connect-select-c10|-C -S -M simple -c 10|10|1"
)
if [ -n "$only_workloads" ]; then
    kept=()
    for w in "${workloads[@]}"; do
        case ",$only_workloads," in *",${w%%|*},"*) kept+=("$w") ;; esac
    done
    [ ${#kept[@]} -gt 0 ] || { echo "run.sh: no workload matches $only_workloads" >&2; exit 2; }
    workloads=("${kept[@]}")
fi

pool_of() {
    case "$1" in transaction) echo "$transaction_pool" ;; *) echo "$session_pool" ;; esac
}

# ---------------------------------------------------------------- state and cleanup

stamp="$(date +%Y%m%d-%H%M%S)"
results="${results:-${TMPDIR:-/tmp}/pgcorral-bench-$stamp}"
mkdir -p "$results/pgbench" "$results/logs"
tmp="$(mktemp -d -t pgcorral-bench.XXXXXX)"
pg_data="$tmp/data"
pg_started=""
bench_pid=""
declare -A inst_pid=() inst_port=() inst_state=()

as_pg=()
as_pg_exec=()
if [ "$(id -u)" -eq 0 ]; then
    if ! id postgres >/dev/null 2>&1; then
        echo "run.sh: running as root and there is no 'postgres' user to run PostgreSQL and pgbouncer as" >&2
        exit 1
    fi
    as_pg=(runuser -u postgres --)
    # setpriv execs in place, so $! is pgbouncer's own pid.
    as_pg_exec=(setpriv --reuid=postgres --regid=postgres --init-groups --)
    chown postgres: "$tmp"
fi

stop_tree() { # pid: TERM the root, wait up to 5 s, KILL whatever of its tree is left
    local root="$1" pids
    pids="$("${helper[@]}" tree "$root" 2>/dev/null || true)"
    [ -n "$pids" ] || return 0
    kill -TERM "$root" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$root" 2>/dev/null || break
        sleep 0.1
    done
    for p in $pids; do
        kill -KILL "$p" 2>/dev/null || true
    done
    wait "$root" 2>/dev/null || true
}

# shellcheck disable=SC2317 # reached through the trap
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    set +e
    if [ -n "$bench_pid" ]; then
        kill -INT "$bench_pid" 2>/dev/null
        sleep 0.5
        kill -KILL "$bench_pid" 2>/dev/null
        wait "$bench_pid" 2>/dev/null
    fi
    for k in "${!inst_pid[@]}"; do
        [ -n "${inst_pid[$k]}" ] && stop_tree "${inst_pid[$k]}"
    done
    if [ -n "$pg_started" ]; then
        (cd "$tmp" && "${as_pg[@]}" "$pg_ctl_bin" -D "$pg_data" -m fast -w -t 20 stop) >/dev/null 2>&1 ||
            (cd "$tmp" && "${as_pg[@]}" "$pg_ctl_bin" -D "$pg_data" -m immediate -w stop) >/dev/null 2>&1
    fi
    cp "$tmp"/*.log "$results/logs/" 2>/dev/null
    rm -rf "$tmp"
    if [ "$status" -ne 0 ]; then
        echo "run.sh: stopped (status $status); what was recorded is in $results" >&2
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- PostgreSQL

read -r pg_port pgb_port_s pgb_port_t pgb_port_p pgc_port_s pgc_port_t pgc_port_p <<<"$("${helper[@]}" free-ports 7)"

# Enough for both poolers' pools in every mode plus 100 direct clients.
pg_max_connections=300
need=$((100 + 10))
for m in "${mode_list[@]}"; do
    need=$((need + 2 * $(pool_of "$m")))
done
[ "$need" -le "$pg_max_connections" ] || pg_max_connections="$need"
pg_settings="fsync=off, max_connections=$pg_max_connections, other settings default"

log "initdb in $tmp"
(cd "$tmp" && "${as_pg[@]}" "$initdb_bin" -D "$pg_data" -U postgres --auth=trust -E UTF8 --locale=C -N) \
    >"$tmp/initdb.log" 2>&1 || { cat "$tmp/initdb.log" >&2; exit 1; }
# setsid: a Ctrl-C must not reach PostgreSQL before cleanup stops it in order.
(cd "$tmp" && "${as_pg[@]}" setsid -w "$pg_ctl_bin" -D "$pg_data" -l "$tmp/postgresql.log" -w -t 60 \
    -o "-p $pg_port -k $tmp -c listen_addresses=127.0.0.1 -c max_connections=$pg_max_connections -c fsync=off" \
    start) >/dev/null || { cat "$tmp/postgresql.log" >&2; exit 1; }
pg_started=yes

export PGUSER=postgres PGDATABASE=postgres PGHOST=127.0.0.1 PGCONNECT_TIMEOUT=10
direct_psql() { "$psql_bin" -X -q -At -p "$pg_port" "$@"; }

log "pgbench -i -s 10 (PostgreSQL on port $pg_port)"
"$pgbench_bin" -i -s 10 -q -p "$pg_port" >"$results/pgbench/init.txt" 2>&1 ||
    { cat "$results/pgbench/init.txt" >&2; exit 1; }

# ---------------------------------------------------------------- poolers

port_of() { # target mode
    case "$1-$2" in
        pgbouncer-session) echo "$pgb_port_s" ;; pgbouncer-transaction) echo "$pgb_port_t" ;;
        pgbouncer-performance) echo "$pgb_port_p" ;; pgcorral-session) echo "$pgc_port_s" ;;
        pgcorral-transaction) echo "$pgc_port_t" ;; pgcorral-performance) echo "$pgc_port_p" ;;
    esac
}

printf '"postgres" ""\n' >"$tmp/userlist.txt"

write_configs() { # mode
    local m="$1" pool pgb_mode reset pipeline
    pool="$(pool_of "$m")"
    case "$m" in
        session) pgb_mode=session; reset="DISCARD ALL"; pipeline=session ;;
        transaction) pgb_mode=transaction; reset="DISCARD ALL"; pipeline=transaction ;;
        performance) pgb_mode=session; reset=""; pipeline=performance ;;
    esac
    cat >"$tmp/pgbouncer-$m.ini" <<INI
[databases]
* = host=127.0.0.1 port=$pg_port

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $(port_of pgbouncer "$m")
unix_socket_dir = $tmp
auth_type = trust
auth_file = $tmp/userlist.txt
pool_mode = $pgb_mode
server_reset_query = $reset
default_pool_size = $pool
max_client_conn = 1000
logfile = $tmp/pgbouncer-$m.log
pidfile = $tmp/pgbouncer-$m.pid
log_connections = 0
log_disconnections = 0
INI
    cat >"$tmp/pgcorral-$m.toml" <<TOML
[pgcorral]
host = "127.0.0.1"
port = $(port_of pgcorral "$m")
unix_socket_dir = "$tmp"
max_connections = $pool
blocking_timeout = "30s"
pipeline = "$pipeline"
log_level = "warn"

[server.primary]
host = "127.0.0.1"
port = $pg_port
TOML
    [ -z "${as_pg[*]}" ] || chown postgres: "$tmp/pgbouncer-$m.ini"
}

start_instance() { # target mode; sets inst_state to up or unavailable
    local t="$1" m="$2" k="$1-$2" port pid
    port="$(port_of "$t" "$m")"
    if [ "$t" = pgbouncer ]; then
        (cd "$tmp" && exec "${as_pg_exec[@]}" "$pgbouncer_bin" "$tmp/pgbouncer-$m.ini") \
            >>"$tmp/pgbouncer-$m.stderr.log" 2>&1 &
    else
        "$pgcorral_bin" -c "$tmp/pgcorral-$m.toml" >>"$tmp/pgcorral-$m.log" 2>&1 &
    fi
    pid=$!
    inst_pid[$k]="$pid"
    inst_port[$k]="$port"
    for _ in $(seq 100); do
        if ! kill -0 "$pid" 2>/dev/null; then
            wait "$pid" 2>/dev/null || true
            inst_pid[$k]=""
            inst_state[$k]=unavailable
            log "$t ($m) exited at start-up: not available; its log ($tmp/$t-$m*.log):"
            tail -n 5 "$tmp/$t-$m"*.log 2>/dev/null | sed 's/^/    /' >&2 || true
            return 0
        fi
        # As pgbench names itself: the server connection this opens is pooled,
        # and a pgbench client given it later should not need a SET.
        if PGAPPNAME=pgbench "$psql_bin" -X -q -At -p "$port" -c 'select 1' >/dev/null 2>&1; then
            inst_state[$k]=up
            return 0
        fi
        sleep 0.1
    done
    inst_state[$k]=unavailable
    log "$t ($m) did not answer within 10 s: not available"
    stop_tree "$pid"
    inst_pid[$k]=""
}

ensure_instance() { # target mode: restarts an instance that died since the last run
    local k="$1-$2"
    [ "${inst_state[$k]}" = up ] || return 0
    if ! kill -0 "${inst_pid[$k]}" 2>/dev/null; then
        log "WARNING: $1 ($2) is gone (pid ${inst_pid[$k]}); restarting it. Log: $tmp/$1-$2.log"
        echo "$(date +%H:%M:%S) $1 ($2) was found dead and restarted" >>"$results/incidents.txt"
        wait "${inst_pid[$k]}" 2>/dev/null || true
        start_instance "$1" "$2"
    fi
}

for m in "${mode_list[@]}"; do
    write_configs "$m"
    for t in pgbouncer pgcorral; do
        log "starting $t, $m mode, pool $(pool_of "$m"), port $(port_of "$t" "$m")"
        start_instance "$t" "$m"
    done
done

if [ -n "$serve" ]; then
    echo "PostgreSQL: psql -h 127.0.0.1 -p $pg_port -U postgres postgres (data in $pg_data)"
    for m in "${mode_list[@]}"; do
        for t in pgbouncer pgcorral; do
            k="$t-$m"
            echo "$t ($m, pool $(pool_of "$m")): port ${inst_port[$k]}, pid ${inst_pid[$k]:-none}, ${inst_state[$k]}"
        done
    done
    echo "Logs in $tmp (copied to $results/logs on exit). Ctrl-C stops everything."
    while :; do sleep 3600 & bench_pid=$!; wait "$bench_pid" || true; done
fi

# ---------------------------------------------------------------- metadata

# PGCORRAL_VERSION describes a binary given with PGCORRAL_BIN; otherwise the
# repository's state is what was built.
if [ -n "${PGCORRAL_VERSION:-}" ]; then
    pgcorral_version="$PGCORRAL_VERSION"
else
    pgcorral_version="$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    if [ -n "$(git -C "$repo" status --porcelain -- src bin Cargo.toml Cargo.lock 2>/dev/null)" ]; then
        pgcorral_version="$pgcorral_version + uncommitted changes"
    fi
fi
pgcorral_version="$pgcorral_version ($pgcorral_bin)"

workload_json=""
for w in "${workloads[@]}"; do
    IFS='|' read -r name args clients txn_ok <<<"$w"
    wm=""
    for m in "${mode_list[@]}"; do
        if [ "$m" != transaction ] || [ "$txn_ok" = 1 ]; then wm="$wm\"$m\","; fi
    done
    workload_json="$workload_json{\"name\":\"$name\",\"args\":\"$args\",\"clients\":$clients,\"modes\":[${wm%,}],\"skip_note\":\"-M prepared needs prepared-statement tracking in transaction mode (pgbouncer 1.18 has none; pgcorral does not carry named statements across connections)\"},"
done

META_STARTED="$(date '+%Y-%m-%d %H:%M:%S %Z')" \
META_NPROC="$(nproc)" \
META_CPU="$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)" \
META_KERNEL="$(uname -r)" \
META_MEM="$(awk '/MemTotal/ {printf "%.0f GiB RAM", $2/1048576}' /proc/meminfo)" \
META_POSTGRES="$("$postgres_bin" --version)" \
META_PGBOUNCER="$("$pgbouncer_bin" --version | head -n 1)" \
META_PGBENCH="$("$pgbench_bin" --version)" \
META_PGCORRAL="$pgcorral_version" \
META_ROUNDS="$rounds" META_DURATION="$duration" META_JOBS="$jobs" \
META_SETTINGS="$pg_settings" \
META_MODES="$modes" META_WORKLOADS="[${workload_json%,}]" \
META_POOLS="{\"session\":$session_pool,\"transaction\":$transaction_pool,\"performance\":$session_pool}" \
python3 - "$results/meta.json" <<'PY'
import json, os, sys
e = os.environ
notes = [
    "Pool: server connections per pooler. Session mode needs one per client, so session-mode pools are "
    f"{json.loads(e['META_POOLS'])['session']} (else 90 of the -c 100 clients would queue for a connection); "
    f"transaction mode uses {json.loads(e['META_POOLS'])['transaction']}. '(queue)': more clients than server connections.",
    "session: pgbouncer pool_mode=session and pgcorral pipeline=\"session\", both DISCARD ALL when a client leaves. "
    "transaction: pool_mode=transaction / pipeline=\"transaction\". performance (if run): pgcorral's performance "
    "pipeline against pgbouncer session mode with server_reset_query empty.",
    "Direct PostgreSQL has no mode: its runs are shared by the rows of every mode.",
    "pgbouncer runs with log_connections=0, log_disconnections=0; pgcorral with log_level=warn.",
    "pgbench, PostgreSQL and the pooler share the machine's CPUs, so a pooler's own CPU use lowers the TPS it lets through.",
    "tpcb-like: pgbench_branches/tellers are vacuumed and pgbench_history truncated directly before every run (pgbench's own pre-run vacuum), then the run uses -n.",
]
meta = {
    "started": e["META_STARTED"], "nproc": e["META_NPROC"], "cpu": e["META_CPU"],
    "kernel": e["META_KERNEL"], "mem": e["META_MEM"], "postgres": e["META_POSTGRES"],
    "pgbouncer": e["META_PGBOUNCER"], "pgbench": e["META_PGBENCH"], "pgcorral": e["META_PGCORRAL"],
    "rounds": int(e["META_ROUNDS"]), "duration": int(e["META_DURATION"]), "jobs": int(e["META_JOBS"]),
    "pg_settings": e["META_SETTINGS"], "modes": e["META_MODES"].split(","),
    "workloads": json.loads(e["META_WORKLOADS"]), "pools": json.loads(e["META_POOLS"]), "notes": notes,
}
with open(sys.argv[1], "w") as f:
    json.dump(meta, f, indent=1)
PY
: >"$results/runs.jsonl"

# ---------------------------------------------------------------- runs

run_pgbench() { # out-file port args...: pgbench in the background so that traps fire at once
    local out="$1" port="$2" rc=0
    shift 2
    "$pgbench_bin" -n -j "$jobs" -T "$duration" -p "$port" "$@" >"$out" 2>&1 &
    bench_pid=$!
    wait "$bench_pid" || rc=$?
    bench_pid=""
    return "$rc"
}

wait_quiet() { # pid: until the pooler's workers have exited and been reaped (at most 5 s)
    local n
    for _ in $(seq 50); do
        n="$("${helper[@]}" tree "$1" | wc -w)"
        [ "$n" -le 1 ] && return 0
        sleep 0.1
    done
}

one_run() { # round workload-name args target mode
    local r="$1" name="$2" args="$3" t="$4" m="$5" k="$4-$5" port pid out before after delta status
    out="$results/pgbench/r$r-$name-$m-$t.txt"
    [ "$t" != direct ] || out="$results/pgbench/r$r-$name-direct.txt"
    printf '%s [round %s/%s] %-22s %-12s %-10s ' "$(date +%H:%M:%S)" "$r" "$rounds" "$name" "$m" "$t" >&2
    if [[ "$name" == tpcb* ]]; then
        direct_psql -c 'VACUUM pgbench_branches' -c 'VACUUM pgbench_tellers' -c 'TRUNCATE pgbench_history' >/dev/null
    fi
    if [ "$t" = direct ]; then
        port="$pg_port"
        pid=""
    else
        ensure_instance "$t" "$m"
        if [ "${inst_state[$k]}" != up ]; then
            echo "$t ($m) not available" >"$out"
            "${helper[@]}" record "$results" "$r" "$name" "$m" "$t" unavailable "$out" - >&2
            return 0
        fi
        port="${inst_port[$k]}"
        pid="${inst_pid[$k]}"
        wait_quiet "$pid"
    fi
    before="$([ -z "$pid" ] || "${helper[@]}" ticks "$pid")"
    status=ok
    # shellcheck disable=SC2086 # args are words
    run_pgbench "$out" "$port" $args || status=failed
    delta=-
    if [ -n "$pid" ]; then
        wait_quiet "$pid"
        after="$("${helper[@]}" ticks "$pid")"
        delta=$((after - before))
        if ! kill -0 "$pid" 2>/dev/null; then
            status=failed
            echo "$(date +%H:%M:%S) $t ($m) died during $name, round $r" >>"$results/incidents.txt"
        fi
    fi
    "${helper[@]}" record "$results" "$r" "$name" "$m" "$t" "$status" "$out" "$delta" >&2
    if [ "$status" != ok ] || ! grep -q '^tps = ' "$out"; then
        sed 's/^/    /' "$out" | tail -n 5 >&2
    fi
}

# A short warm-up through every pooler, not recorded: fills the pools.
for m in "${mode_list[@]}"; do
    for t in pgbouncer pgcorral; do
        k="$t-$m"
        [ "${inst_state[$k]}" = up ] || continue
        "$pgbench_bin" -n -S -j "$jobs" -c 10 -T 2 -p "${inst_port[$k]}" >"$results/pgbench/warmup-$m-$t.txt" 2>&1 || true
    done
done

log "results in $results; $rounds round(s) of ${#workloads[@]} workload(s), $duration s per run"
for r in $(seq "$rounds"); do
    for w in "${workloads[@]}"; do
        IFS='|' read -r name args clients txn_ok <<<"$w"
        if [ "$txn_ok" = 1 ] || [ "$modes" != transaction ]; then
            one_run "$r" "$name" "$args" direct -
        fi
        for m in "${mode_list[@]}"; do
            if [ "$m" = transaction ] && [ "$txn_ok" != 1 ]; then
                continue
            fi
            one_run "$r" "$name" "$args" pgbouncer "$m"
            one_run "$r" "$name" "$args" pgcorral "$m"
        done
    done
done

# ---------------------------------------------------------------- memory

: >"$results/memory.jsonl"
if [ -n "$memory" ]; then
    for m in "${mode_list[@]}"; do
        for t in pgbouncer pgcorral; do
            k="$t-$m"
            log "memory: $t ($m) with $idle_clients idle clients"
            ensure_instance "$t" "$m"
            if [ "${inst_state[$k]}" != up ]; then
                echo "{\"mode\":\"$m\",\"target\":\"$t\",\"status\":\"not available\"}" >>"$results/memory.jsonl"
                continue
            fi
            wait_quiet "${inst_pid[$k]}"
            if line="$("${helper[@]}" idle-mem "${inst_port[$k]}" "${inst_pid[$k]}" "$idle_clients" postgres postgres 2>"$tmp/idle-mem.err")"; then
                echo "${line%\}},\"mode\":\"$m\",\"target\":\"$t\",\"status\":\"ok\"}" >>"$results/memory.jsonl"
            else
                log "memory measurement failed: $(tail -n 1 "$tmp/idle-mem.err")"
                echo "{\"mode\":\"$m\",\"target\":\"$t\",\"status\":\"failed\"}" >>"$results/memory.jsonl"
            fi
        done
    done
fi

# ---------------------------------------------------------------- table

"${helper[@]}" table "$results" | tee "$results/table.md"
if [ -s "$results/incidents.txt" ]; then
    echo
    echo "Incidents:"
    cat "$results/incidents.txt"
fi
echo
echo "Raw pgbench output, pooler logs and table: $results"
