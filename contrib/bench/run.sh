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
#   --pgbouncers N    N pgbouncer processes per pool, sharing its port with
#                     so_reuseport and its pool (pool / N each, rounded up);
#                     their CPU and memory are summed (default 1)
#   --idle-clients N  idle clients for the memory measurement (default 100)
#   --results DIR     where to keep the results (default /tmp/pgcorral-bench-<time>)
#   --no-memory       skip the idle-clients memory measurement
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
pgbouncers=1
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
        --pgbouncers) pgbouncers="$2"; shift 2 ;;
        --idle-clients) idle_clients="$2"; shift 2 ;;
        --results) results="$2"; shift 2 ;;
        --no-memory) memory=""; shift ;;
        --serve) serve=yes; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "run.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done
for v in "$rounds" "$duration" "$pgbouncers" "$idle_clients"; do
    case "$v" in ''|*[!0-9]*|0*) echo "run.sh: --rounds, --duration, --pgbouncers and --idle-clients take positive integers" >&2; exit 2 ;; esac
done
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

# name | pgbench arguments | clients | where | pool
#   where: any      every mode given with --modes;
#          no-txn   every mode but transaction (a "skipped" row there);
#          txn-only transaction mode only (no row for the other modes).
#   pool:  server connections of the poolers it runs against; empty: the
#          mode's pool (session and performance 100, transaction 20).
workloads=(
    "select-c10-simple|-S -M simple -c 10|10|any|"
    "select-c10-prepared|-S -M prepared -c 10|10|no-txn|"
    "select-c100-simple|-S -M simple -c 100|100|any|"
    "select-c100-prepared|-S -M prepared -c 100|100|no-txn|"
    "tpcb-c10-simple|-M simple -c 10|10|any|"
    "connect-select-c10|-C -S -M simple -c 10|10|any|"
    "select-c50-on20|-S -M simple -c 50|50|txn-only|20"
    "select-c256-on32|-S -M simple -c 256|256|txn-only|32"
    "tpcb-c50-on20|-M simple -c 50|50|txn-only|20"
)
if [ -n "$only_workloads" ]; then
    kept=()
    for w in "${workloads[@]}"; do
        case ",$only_workloads," in *",${w%%|*},"*) kept+=("$w") ;; esac
    done
    [ ${#kept[@]} -gt 0 ] || { echo "run.sh: no workload matches $only_workloads" >&2; exit 2; }
    workloads=("${kept[@]}")
fi

pool_of() { # mode: its pool when a workload names none
    case "$1" in transaction) echo "$transaction_pool" ;; *) echo "$session_pool" ;; esac
}

runs_in() { # where mode
    case "$1-$2" in
        any-*) return 0 ;;
        no-txn-transaction) return 1 ;;
        no-txn-*) return 0 ;;
        txn-only-transaction) return 0 ;;
        *) return 1 ;;
    esac
}

group_of() { # mode workload-pool: the pooler pair a workload runs against, "<mode>-<pool>"
    echo "$1-${2:-$(pool_of "$1")}"
}

# One pgbouncer (of --pgbouncers processes) and one pgcorral per pooler group:
# every mode's own pool, and every other pool a workload in that mode names.
groups=()
add_group() {
    local g
    for g in "${groups[@]}"; do [ "$g" != "$1" ] || return 0; done
    groups+=("$1")
}
for m in "${mode_list[@]}"; do
    add_group "$(group_of "$m" "")"
done
max_run_clients=0
for w in "${workloads[@]}"; do
    IFS='|' read -r name args clients where wpool <<<"$w"
    for m in "${mode_list[@]}"; do
        if runs_in "$where" "$m"; then
            add_group "$(group_of "$m" "$wpool")"
            [ "$clients" -le "$max_run_clients" ] || max_run_clients="$clients"
        fi
    done
done

# pgbench -j follows the cores, capped by the clients (pgbench refuses more
# threads than clients).
nproc_n="$(nproc)"
jobs_for() { # clients
    if [ "$1" -lt "$nproc_n" ]; then echo "$1"; else echo "$nproc_n"; fi
}

# Clients each pooler must accept at once: the largest workload or the idle
# clients, plus the harness's own check connections and workers still exiting.
clients_needed="$max_run_clients"
[ -z "$memory" ] || [ "$idle_clients" -le "$clients_needed" ] || clients_needed="$idle_clients"
clients_needed=$((clients_needed + 64))
pgbouncer_max_client_conn=1000
[ "$clients_needed" -le "$pgbouncer_max_client_conn" ] || pgbouncer_max_client_conn="$clients_needed"
# pgcorral's max_clients is written only above its default (1000), so that
# binaries from before the key still start.
pgcorral_max_clients_line=""
[ "$clients_needed" -le 1000 ] || pgcorral_max_clients_line="max_clients = $clients_needed"

# Descriptors: pgbouncer holds one per client and server connection, the
# idle-clients measurement one per client; all inherit this shell's limit.
fd_need=$((pgbouncer_max_client_conn + 2 * session_pool + 256))
fd_soft="$(ulimit -Sn)"
fd_hard="$(ulimit -Hn)"
if [ "$fd_soft" != unlimited ] && [ "$fd_soft" -lt "$fd_need" ]; then
    if [ "$fd_hard" = unlimited ] || [ "$fd_hard" -ge "$fd_need" ]; then
        ulimit -Sn "$fd_need"
    else
        ulimit -Sn "$fd_hard"
        log "WARNING: the descriptor limit is $fd_hard (hard); $fd_need are wanted for $clients_needed clients"
    fi
fi

# ---------------------------------------------------------------- state and cleanup

stamp="$(date +%Y%m%d-%H%M%S)"
results="${results:-${TMPDIR:-/tmp}/pgcorral-bench-$stamp}"
mkdir -p "$results/pgbench" "$results/logs"
tmp="$(mktemp -d -t pgcorral-bench.XXXXXX)"
pg_data="$tmp/data"
pg_started=""
bench_pid=""
# Per instance ("<target>-<mode>-<pool>"): its pids (pgbouncer: one per
# process, space separated), port and state.
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
        for p in ${inst_pid[$k]}; do
            stop_tree "$p"
        done
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

pgbouncer_pool() { # pool: per pgbouncer process
    echo $(((${1} + pgbouncers - 1) / pgbouncers))
}

read -r -a ports <<<"$("${helper[@]}" free-ports $((1 + 2 * ${#groups[@]})))"
pg_port="${ports[0]}"
declare -A group_port=()
i=1
for g in "${groups[@]}"; do
    group_port[pgbouncer-$g]="${ports[$i]}"
    group_port[pgcorral-$g]="${ports[$((i + 1))]}"
    i=$((i + 2))
done

# Enough for every pooler's pool plus the largest direct run.
pg_max_connections=300
need=$((max_run_clients + 10))
for g in "${groups[@]}"; do
    pool="${g##*-}"
    need=$((need + pgbouncers * $(pgbouncer_pool "$pool") + pool))
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

printf '"postgres" ""\n' >"$tmp/userlist.txt"

write_configs() { # group ("<mode>-<pool>")
    local g="$1" m="${1%-*}" pool="${1##*-}" pgb_mode reset pipeline n reuseport=""
    case "$m" in
        session) pgb_mode=session; reset="DISCARD ALL"; pipeline=session ;;
        transaction) pgb_mode=transaction; reset="DISCARD ALL"; pipeline=transaction ;;
        performance) pgb_mode=session; reset=""; pipeline=performance ;;
    esac
    # pgbouncer is one process; more of them share the port through
    # SO_REUSEPORT (the kernel spreads new connections over them) and need
    # their own socket directory, pid file and log.
    [ "$pgbouncers" -eq 1 ] || reuseport="so_reuseport = 1"
    for n in $(seq "$pgbouncers"); do
        mkdir -p "$tmp/pgbouncer-$g-$n"
        cat >"$tmp/pgbouncer-$g-$n.ini" <<INI
[databases]
* = host=127.0.0.1 port=$pg_port

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = ${group_port[pgbouncer-$g]}
unix_socket_dir = $tmp/pgbouncer-$g-$n
auth_type = trust
auth_file = $tmp/userlist.txt
pool_mode = $pgb_mode
server_reset_query = $reset
default_pool_size = $(pgbouncer_pool "$pool")
max_client_conn = $pgbouncer_max_client_conn
logfile = $tmp/pgbouncer-$g-$n.log
pidfile = $tmp/pgbouncer-$g-$n.pid
log_connections = 0
log_disconnections = 0
$reuseport
INI
        [ -z "${as_pg[*]}" ] || chown postgres: "$tmp/pgbouncer-$g-$n.ini" "$tmp/pgbouncer-$g-$n"
    done
    cat >"$tmp/pgcorral-$g.toml" <<TOML
[pgcorral]
host = "127.0.0.1"
port = ${group_port[pgcorral-$g]}
unix_socket_dir = "$tmp"
max_connections = $pool
$pgcorral_max_clients_line
blocking_timeout = "30s"
pipeline = "$pipeline"
log_level = "warn"

[server.primary]
host = "127.0.0.1"
port = $pg_port
TOML
}

answers() { # port [host]: whether a pooler there serves a query
    # As pgbench names itself: the server connection this opens is pooled,
    # and a pgbench client given it later should not need a SET.
    PGAPPNAME=pgbench "$psql_bin" -X -q -At -h "${2:-127.0.0.1}" -p "$1" -c 'select 1' >/dev/null 2>&1
}

start_instance() { # target group; sets inst_state to up or unavailable
    local t="$1" g="$2" k="$1-$2" port pid pids="" n up
    port="${group_port[$k]}"
    if [ "$t" = pgbouncer ]; then
        for n in $(seq "$pgbouncers"); do
            (cd "$tmp" && exec "${as_pg_exec[@]}" "$pgbouncer_bin" "$tmp/pgbouncer-$g-$n.ini") \
                >>"$tmp/pgbouncer-$g-$n.stderr.log" 2>&1 &
            pids="$pids $!"
        done
    else
        "$pgcorral_bin" -c "$tmp/pgcorral-$g.toml" >>"$tmp/pgcorral-$g.log" 2>&1 &
        pids="$!"
    fi
    inst_pid[$k]="${pids# }"
    inst_port[$k]="$port"
    for _ in $(seq 100); do
        up=yes
        n=0
        for pid in ${inst_pid[$k]}; do
            n=$((n + 1))
            if ! kill -0 "$pid" 2>/dev/null; then
                log "$t ($g) exited at start-up: not available; its log ($tmp/$t-$g*.log):"
                tail -n 5 "$tmp/$t-$g"*.log 2>/dev/null | sed 's/^/    /' >&2 || true
                stop_instance "$k"
                return 0
            fi
            # Each pgbouncer through its own Unix socket: over TCP the
            # kernel picks one of them.
            if [ "$t" = pgbouncer ]; then
                answers "$port" "$tmp/pgbouncer-$g-$n" || up=""
            else
                answers "$port" || up=""
            fi
        done
        if [ -n "$up" ]; then
            inst_state[$k]=up
            return 0
        fi
        sleep 0.1
    done
    log "$t ($g) did not answer within 10 s: not available"
    stop_instance "$k"
}

stop_instance() { # key: stops all its processes, marks it unavailable
    local pid
    for pid in ${inst_pid[$1]}; do
        stop_tree "$pid"
        wait "$pid" 2>/dev/null || true
    done
    inst_pid[$1]=""
    inst_state[$1]=unavailable
}

ensure_instance() { # target group: restarts an instance of which a process died since the last run
    local k="$1-$2" pid
    [ "${inst_state[$k]}" = up ] || return 0
    for pid in ${inst_pid[$k]}; do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "WARNING: $1 ($2) process $pid is gone; restarting. Logs: $tmp/$1-$2*.log"
            echo "$(date +%H:%M:%S) $1 ($2) was found dead and restarted" >>"$results/incidents.txt"
            stop_instance "$k"
            start_instance "$1" "$2"
            return 0
        fi
    done
}

describe() { # target group: "transaction mode, pool 20"
    local pool="${2##*-}" s
    s="${2%-*} mode, pool $pool"
    [ "$1" != pgbouncer ] || [ "$pgbouncers" -eq 1 ] || s="$s ($pgbouncers processes × $(pgbouncer_pool "$pool"))"
    echo "$s"
}

for g in "${groups[@]}"; do
    write_configs "$g"
    for t in pgbouncer pgcorral; do
        log "starting $t, $(describe "$t" "$g"), port ${group_port[$t-$g]}"
        start_instance "$t" "$g"
    done
done

if [ -n "$serve" ]; then
    echo "PostgreSQL: psql -h 127.0.0.1 -p $pg_port -U postgres postgres (data in $pg_data)"
    for g in "${groups[@]}"; do
        for t in pgbouncer pgcorral; do
            k="$t-$g"
            echo "$t ($(describe "$t" "$g")): port ${inst_port[$k]}, pid(s) ${inst_pid[$k]:-none}, ${inst_state[$k]}"
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
    IFS='|' read -r name args clients where wpool <<<"$w"
    wm=""
    ws=""
    for m in "${mode_list[@]}"; do
        if runs_in "$where" "$m"; then
            wm="$wm\"$m\","
        elif [ "$where" = no-txn ]; then
            ws="$ws\"$m\","
        fi
    done
    workload_json="$workload_json{\"name\":\"$name\",\"args\":\"$args\",\"clients\":$clients,\"jobs\":$(jobs_for "$clients"),\"pool\":${wpool:-null},\"modes\":[${wm%,}],\"skipped\":[${ws%,}],\"skip_note\":\"-M prepared needs prepared-statement tracking in transaction mode, which pgbouncer 1.18 does not have\"},"
done

META_STARTED="$(date '+%Y-%m-%d %H:%M:%S %Z')" \
META_NPROC="$nproc_n" \
META_CPU="$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)" \
META_KERNEL="$(uname -r)" \
META_MEM="$(awk '/MemTotal/ {printf "%.0f GiB RAM", $2/1048576}' /proc/meminfo)" \
META_POSTGRES="$("$postgres_bin" --version)" \
META_PGBOUNCER="$("$pgbouncer_bin" --version | head -n 1)" \
META_PGBENCH="$("$pgbench_bin" --version)" \
META_PGCORRAL="$pgcorral_version" \
META_ROUNDS="$rounds" META_DURATION="$duration" META_PGBOUNCERS="$pgbouncers" \
META_SETTINGS="$pg_settings" \
META_MODES="$modes" META_WORKLOADS="[${workload_json%,}]" \
META_POOLS="{\"session\":$session_pool,\"transaction\":$transaction_pool,\"performance\":$session_pool}" \
python3 - "$results/meta.json" <<'PY'
import json, os, sys
e = os.environ
pools = json.loads(e["META_POOLS"])
n_pgb = int(e["META_PGBOUNCERS"])
notes = [
    "Pool: server connections per pooler. Session mode needs one per client, so session-mode pools are "
    f"{pools['session']} (else 90 of the -c 100 clients would queue for a connection); "
    f"transaction mode uses {pools['transaction']}, and a workload named ...-onN runs against a "
    "pooler pair of its own with a pool of N. '(queue)': more clients than server connections.",
    "session: pgbouncer pool_mode=session and pgcorral pipeline=\"session\", both DISCARD ALL when a client leaves. "
    "transaction: pool_mode=transaction / pipeline=\"transaction\". performance (if run): pgcorral's performance "
    "pipeline against pgbouncer session mode with server_reset_query empty.",
    "Direct PostgreSQL has no mode: its runs are shared by the rows of every mode.",
    "pgbouncer runs with log_connections=0, log_disconnections=0; pgcorral with log_level=warn.",
    "pgbench, PostgreSQL and the pooler share the machine's CPUs, so a pooler's own CPU use lowers the TPS it lets through.",
    "tpcb-like: pgbench_branches/tellers are vacuumed and pgbench_history truncated directly before every run (pgbench's own pre-run vacuum), then the run uses -n.",
]
if n_pgb > 1:
    notes.append(
        f"pgbouncer: {n_pgb} processes per pool on one port (so_reuseport = 1; the kernel spreads new connections "
        f"over them by a hash of the address, not evenly), each with default_pool_size = pool / {n_pgb} rounded up; "
        "CPU and memory are summed over all of them.")
meta = {
    "started": e["META_STARTED"], "nproc": int(e["META_NPROC"]), "cpu": e["META_CPU"],
    "kernel": e["META_KERNEL"], "mem": e["META_MEM"], "postgres": e["META_POSTGRES"],
    "pgbouncer": e["META_PGBOUNCER"], "pgbench": e["META_PGBENCH"], "pgcorral": e["META_PGCORRAL"],
    "rounds": int(e["META_ROUNDS"]), "duration": int(e["META_DURATION"]), "pgbouncers": n_pgb,
    "pg_settings": e["META_SETTINGS"], "modes": e["META_MODES"].split(","),
    "workloads": json.loads(e["META_WORKLOADS"]), "pools": pools, "notes": notes,
}
with open(sys.argv[1], "w") as f:
    json.dump(meta, f, indent=1)
PY
: >"$results/runs.jsonl"

# ---------------------------------------------------------------- runs

run_pgbench() { # out-file port clients args...: pgbench in the background so that traps fire at once
    local out="$1" port="$2" jobs rc=0
    jobs="$(jobs_for "$3")"
    shift 3
    "$pgbench_bin" -n -j "$jobs" -T "$duration" -p "$port" "$@" >"$out" 2>&1 &
    bench_pid=$!
    wait "$bench_pid" || rc=$?
    bench_pid=""
    return "$rc"
}

wait_quiet() { # pid...: until the pooler's workers have exited and been reaped (at most 5 s)
    local n
    for _ in $(seq 50); do
        n="$("${helper[@]}" tree "$@" | wc -w)"
        [ "$n" -le $# ] && return 0
        sleep 0.1
    done
}

alive() { # pid...: whether all of them are
    local pid
    for pid in "$@"; do
        kill -0 "$pid" 2>/dev/null || return 1
    done
}

one_run() { # round workload-name args clients target group ("-" for direct)
    local r="$1" name="$2" args="$3" clients="$4" t="$5" g="$6" k="$5-$6" m="${6%-*}" port pids out before after delta status
    out="$results/pgbench/r$r-$name-$m-$t.txt"
    [ "$t" != direct ] || out="$results/pgbench/r$r-$name-direct.txt"
    [ "$t" != direct ] || m=-
    printf '%s [round %s/%s] %-22s %-12s %-10s ' "$(date +%H:%M:%S)" "$r" "$rounds" "$name" "$m" "$t" >&2
    if [[ "$name" == tpcb* ]]; then
        direct_psql -c 'VACUUM pgbench_branches' -c 'VACUUM pgbench_tellers' -c 'TRUNCATE pgbench_history' >/dev/null
    fi
    if [ "$t" = direct ]; then
        port="$pg_port"
        pids=""
    else
        ensure_instance "$t" "$g"
        if [ "${inst_state[$k]}" != up ]; then
            echo "$t ($g) not available" >"$out"
            "${helper[@]}" record "$results" "$r" "$name" "$m" "$t" unavailable "$out" - >&2
            return 0
        fi
        port="${inst_port[$k]}"
        pids="${inst_pid[$k]}"
        # shellcheck disable=SC2086 # pids are words
        wait_quiet $pids
    fi
    # shellcheck disable=SC2086
    before="$([ -z "$pids" ] || "${helper[@]}" ticks $pids)"
    status=ok
    # shellcheck disable=SC2086 # args are words
    run_pgbench "$out" "$port" "$clients" $args || status=failed
    delta=-
    if [ -n "$pids" ]; then
        # shellcheck disable=SC2086
        wait_quiet $pids
        # shellcheck disable=SC2086
        after="$("${helper[@]}" ticks $pids)"
        delta=$((after - before))
        # shellcheck disable=SC2086
        if ! alive $pids; then
            status=failed
            echo "$(date +%H:%M:%S) $t ($g) died during $name, round $r" >>"$results/incidents.txt"
        fi
    fi
    "${helper[@]}" record "$results" "$r" "$name" "$m" "$t" "$status" "$out" "$delta" >&2
    if [ "$status" != ok ] || ! grep -q '^tps = ' "$out"; then
        sed 's/^/    /' "$out" | tail -n 5 >&2
    fi
}

# A short warm-up through every pooler, not recorded: fills the pools.
for g in "${groups[@]}"; do
    for t in pgbouncer pgcorral; do
        k="$t-$g"
        [ "${inst_state[$k]}" = up ] || continue
        "$pgbench_bin" -n -S -j "$(jobs_for 10)" -c 10 -T 2 -p "${inst_port[$k]}" >"$results/pgbench/warmup-$g-$t.txt" 2>&1 || true
    done
done

log "results in $results; $rounds round(s) of ${#workloads[@]} workload(s), $duration s per run, pgbench -j up to $nproc_n"
for r in $(seq "$rounds"); do
    for w in "${workloads[@]}"; do
        IFS='|' read -r name args clients where wpool <<<"$w"
        run_modes=()
        for m in "${mode_list[@]}"; do
            if runs_in "$where" "$m"; then
                run_modes+=("$m")
            fi
        done
        [ ${#run_modes[@]} -gt 0 ] || continue
        one_run "$r" "$name" "$args" "$clients" direct -
        for m in "${run_modes[@]}"; do
            g="$(group_of "$m" "$wpool")"
            one_run "$r" "$name" "$args" "$clients" pgbouncer "$g"
            one_run "$r" "$name" "$args" "$clients" pgcorral "$g"
        done
    done
done

# ---------------------------------------------------------------- memory

# Each mode's own pooler pair. Idle clients of a session-holding pipeline
# (pgcorral's session and performance) each keep a server connection, so
# with more of them than the pool the rest would wait for blocking_timeout:
# that measurement is skipped. pgbouncer gives a server connection only to a
# client that sends something.
: >"$results/memory.jsonl"
if [ -n "$memory" ]; then
    for m in "${mode_list[@]}"; do
        g="$(group_of "$m" "")"
        for t in pgbouncer pgcorral; do
            k="$t-$g"
            base="{\"mode\":\"$m\",\"target\":\"$t\",\"clients\":$idle_clients"
            if [ "$t" = pgcorral ] && [ "$m" != transaction ] && [ "$idle_clients" -gt "$(pool_of "$m")" ]; then
                log "memory: $t ($m): skipped, $idle_clients idle clients would need as many server connections"
                echo "$base,\"status\":\"skipped\"}" >>"$results/memory.jsonl"
                continue
            fi
            log "memory: $t ($m) with $idle_clients idle clients"
            ensure_instance "$t" "$g"
            if [ "${inst_state[$k]}" != up ]; then
                echo "$base,\"status\":\"not available\"}" >>"$results/memory.jsonl"
                continue
            fi
            # shellcheck disable=SC2086
            wait_quiet ${inst_pid[$k]}
            if line="$("${helper[@]}" idle-mem "${inst_port[$k]}" "${inst_pid[$k]// /,}" "$idle_clients" postgres postgres 2>"$tmp/idle-mem.err")"; then
                echo "${line%\}},\"mode\":\"$m\",\"target\":\"$t\",\"status\":\"ok\"}" >>"$results/memory.jsonl"
            else
                log "memory measurement failed: $(tail -n 1 "$tmp/idle-mem.err")"
                echo "$base,\"status\":\"failed\"}" >>"$results/memory.jsonl"
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
