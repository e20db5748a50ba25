#!/usr/bin/env bash
# Builds pgcorral and runs it in the foreground in front of a PostgreSQL.
#
#   bash contrib/up.sh                                   # throwaway PostgreSQL
#   PGCORRAL_SERVER=db.example:5432 bash contrib/up.sh   # your own PostgreSQL
#   PGCORRAL_PORT=6432 bash contrib/up.sh                # listen elsewhere than 2345
#
# Without PGCORRAL_SERVER it starts a throwaway PostgreSQL (trust
# authentication, user postgres) in a temporary directory. Ctrl-C stops
# pgcorral and that PostgreSQL and removes the directory.
set -euo pipefail
cd "$(dirname "$0")/.."

listen_port="${PGCORRAL_PORT:-2345}"

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

if [ -z "${PGCORRAL_SERVER:-}" ] && { [ -z "$(pg_program initdb)" ] || [ -z "$(pg_program pg_ctl)" ]; }; then
    echo "up.sh: installing PostgreSQL from Debian's packages" >&2
    $sudo apt-get update
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        postgresql postgresql-contrib
fi

cargo build --release
pgcorral="${CARGO_TARGET_DIR:-target}/release/pgcorral"

tmp="$(mktemp -d -t pgcorral-up.XXXXXX)"
pg_data=""
pgcorral_pid=""
as_pg=()

# shellcheck disable=SC2317 # reached through the trap
cleanup() {
    trap - EXIT INT TERM
    if [ -n "$pgcorral_pid" ] && kill -0 "$pgcorral_pid" 2>/dev/null; then
        kill -TERM "$pgcorral_pid" 2>/dev/null || true
        wait "$pgcorral_pid" 2>/dev/null || true
    fi
    if [ -n "$pg_data" ] && [ -f "$pg_data/postmaster.pid" ]; then
        (cd "$tmp" && "${as_pg[@]}" "$(pg_program pg_ctl)" -D "$pg_data" -m fast -w stop) >/dev/null 2>&1 || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

if [ -n "${PGCORRAL_SERVER:-}" ]; then
    server_host="${PGCORRAL_SERVER%:*}"
    server_port="${PGCORRAL_SERVER##*:}"
    if [ "$server_host" = "$PGCORRAL_SERVER" ]; then
        server_port=5432
    fi
else
    # PostgreSQL refuses to run as root: run it as the postgres user that
    # Debian's package creates.
    if [ "$(id -u)" -eq 0 ]; then
        if ! id postgres >/dev/null 2>&1; then
            echo "up.sh: running as root and there is no 'postgres' user to run PostgreSQL as" >&2
            exit 1
        fi
        as_pg=(runuser -u postgres --)
        chown postgres: "$tmp"
    fi
    pg_data="$tmp/data"
    # From inside $tmp: the postgres user may not be allowed into our directory.
    (cd "$tmp" && "${as_pg[@]}" "$(pg_program initdb)" -D "$pg_data" -U postgres --auth=trust \
        -E UTF8 --locale=C -N) >"$tmp/initdb.log" 2>&1 || {
        cat "$tmp/initdb.log" >&2
        exit 1
    }
    server_host=127.0.0.1
    started=""
    for _ in 1 2 3 4 5; do
        server_port=$((20000 + RANDOM % 30000))
        if port_in_use "$server_port" || [ "$server_port" = "$listen_port" ]; then
            continue
        fi
        # setsid: a Ctrl-C meant for pgcorral must not also hit PostgreSQL,
        # which cleanup stops in order.
        if (cd "$tmp" && "${as_pg[@]}" setsid -w "$(pg_program pg_ctl)" -D "$pg_data" -l "$tmp/postgresql.log" -w \
            -o "-p $server_port -k $tmp -c listen_addresses=127.0.0.1" start >/dev/null); then
            started=yes
            break
        fi
    done
    if [ -z "$started" ]; then
        echo "up.sh: could not start PostgreSQL; its log:" >&2
        cat "$tmp/postgresql.log" >&2 || true
        exit 1
    fi
fi

cat >"$tmp/pgcorral.toml" <<TOML
[pgcorral]
host = "127.0.0.1"
port = $listen_port
unix_socket_dir = "$tmp"
pipeline = "performance"
max_connections = 20
blocking_timeout = "30s"
log_level = "info"

[server.primary]
host = "$server_host"
port = $server_port
TOML

cat <<MSG

pgcorral is starting on 127.0.0.1:$listen_port (and $tmp/.s.PGSQL.$listen_port),
in front of PostgreSQL at $server_host:$server_port. Config: $tmp/pgcorral.toml

  connect:  psql -h 127.0.0.1 -p $listen_port -U postgres postgres
  stop:     Ctrl-C

MSG

"$pgcorral" -c "$tmp/pgcorral.toml" &
pgcorral_pid=$!
# wait returns early when a trapped signal arrives; cleanup then ends pgcorral.
status=0
wait "$pgcorral_pid" || status=$?
pgcorral_pid=""
exit "$status"
