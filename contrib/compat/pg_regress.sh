#!/usr/bin/env bash
# Runs PostgreSQL's own regression suite through pgcorral, once per
# pipeline, against a throwaway cluster, and prints passed/failed.
#
#   bash contrib/compat/pg_regress.sh                          # session and transaction
#   bash contrib/compat/pg_regress.sh performance session transaction direct
#
# "direct" runs the suite against the cluster itself, as a reference.
#
# It takes the source of the installed server version from Debian
# (`apt-get source`, adding a deb-src entry when there is none), builds
# regress.so, autoinc.so and refint.so from it, and runs a serial schedule
# made from parallel_schedule with `pg_regress --use-existing`. Each target
# gets a fresh cluster, so no run sees another's leftovers. The source and
# the built libraries are cached in ${PGCORRAL_COMPAT_CACHE:-/var/tmp/pgcorral-compat}.
# Results (regression.diffs, regression.out) are kept under that directory,
# in results/<target>/.
#
# This is an acceptance check, not part of the test suite: a run takes a few
# minutes per target.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo="$(pwd)"

targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
    targets=(session transaction)
fi
for t in "${targets[@]}"; do
    case "$t" in
    performance | session | transaction | direct) ;;
    *)
        echo "pg_regress.sh: unknown target '$t' (performance, session, transaction, direct)" >&2
        exit 2
        ;;
    esac
done

sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi

pg_config_bin="$(compgen -G '/usr/lib/postgresql/*/bin/pg_config' | sort -V | tail -n 1 || true)"
if [ -z "$pg_config_bin" ]; then
    echo "pg_regress.sh: PostgreSQL server is not installed (run contrib/test.sh or apt-get install postgresql)" >&2
    exit 1
fi
bindir="$(dirname "$pg_config_bin")"
major="$(basename "$(dirname "$bindir")")"
# The exact Debian version of the installed server, so that the source and
# the expected outputs match the binaries.
version="$(dpkg-query -W -f='${Version}' "postgresql-$major")"

cache="${PGCORRAL_COMPAT_CACHE:-/var/tmp/pgcorral-compat}"
mkdir -p "$cache"

# pg_regress itself and the server headers come with the -dev package.
pgxs_regress="/usr/lib/postgresql/$major/lib/pgxs/src/test/regress/pg_regress"
if [ ! -x "$pgxs_regress" ] || [ ! -d "/usr/include/postgresql/$major/server" ]; then
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "postgresql-server-dev-$major=$version" build-essential
fi

src="$(compgen -G "$cache/postgresql-$major-*/src/test/regress" | head -n 1 || true)"
if [ -z "$src" ]; then
    if ! grep -rqs '^Types:.*deb-src\|^deb-src' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        echo "pg_regress.sh: adding deb-src to Debian's sources" >&2
        if [ -f /etc/apt/sources.list.d/debian.sources ]; then
            $sudo sed -i 's/^Types: deb$/Types: deb deb-src/' /etc/apt/sources.list.d/debian.sources
        else
            grep '^deb ' /etc/apt/sources.list | sed 's/^deb /deb-src /' |
                $sudo tee /etc/apt/sources.list.d/pgcorral-deb-src.list >/dev/null
        fi
    fi
    $sudo apt-get update -qq
    (cd "$cache" && apt-get source -qq "postgresql-$major=$version")
    src="$(compgen -G "$cache/postgresql-$major-*/src/test/regress" | head -n 1)"
fi
top="$(cd "$src/../../.." && pwd)"

dlpath="$cache/lib"
if [ ! -f "$dlpath/regress.so" ]; then
    mkdir -p "$dlpath"
    inc="$("$pg_config_bin" --includedir-server)"
    gcc -O2 -fPIC -shared -I"$inc" -o "$dlpath/regress.so" "$src/regress.c"
    gcc -O2 -fPIC -shared -I"$inc" -o "$dlpath/autoinc.so" "$top/contrib/spi/autoinc.c"
    # As contrib/spi's Makefile builds it: the triggers test expects its notices.
    gcc -O2 -fPIC -shared -I"$inc" -DREFINT_VERBOSE -o "$dlpath/refint.so" "$top/contrib/spi/refint.c"
fi

# One test per line, in parallel_schedule's order.
schedule="$cache/serial_schedule"
sed -n 's/^test: *//p' "$src/parallel_schedule" | tr -s ' ' '\n' | sed '/^$/d;s/^/test: /' >"$schedule"
total="$(wc -l <"$schedule")"

if [ ! -x target/release/pgcorral ] || [ -n "$(find src bin Cargo.toml -newer target/release/pgcorral -print -quit)" ]; then
    cargo build --release --bin pgcorral
fi
pgcorral="$repo/target/release/pgcorral"

as_pg=()
if [ "$(id -u)" -eq 0 ]; then
    as_pg=(runuser -u postgres --)
fi

port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}
free_port() {
    local p
    while :; do
        p=$((20000 + RANDOM % 30000))
        port_in_use "$p" || {
            echo "$p"
            return
        }
    done
}

tmp=""
pg_data=""
pgcorral_pid=""
# shellcheck disable=SC2317 # reached through the trap
stop_all() {
    if [ -n "$pgcorral_pid" ] && kill -0 "$pgcorral_pid" 2>/dev/null; then
        kill -TERM "$pgcorral_pid" 2>/dev/null || true
        wait "$pgcorral_pid" 2>/dev/null || true
    fi
    pgcorral_pid=""
    if [ -n "$pg_data" ] && [ -f "$pg_data/postmaster.pid" ]; then
        (cd "$tmp" && "${as_pg[@]}" "$bindir/pg_ctl" -D "$pg_data" -m immediate -w stop) >/dev/null 2>&1 || true
    fi
    pg_data=""
    if [ -n "$tmp" ]; then
        rm -rf "$tmp"
    fi
    tmp=""
}
trap stop_all EXIT
trap 'exit 130' INT TERM

summary=()
for target in "${targets[@]}"; do
    tmp="$(mktemp -d -t pgcorral-regress.XXXXXX)"
    chmod 755 "$tmp"
    [ "${#as_pg[@]}" -gt 0 ] && chown postgres: "$tmp"
    pg_data="$tmp/data"
    (cd "$tmp" && "${as_pg[@]}" "$bindir/initdb" -D "$pg_data" -U postgres --auth=trust \
        -E UTF8 --locale=C -N) >"$tmp/initdb.log" 2>&1 || {
        cat "$tmp/initdb.log" >&2
        exit 1
    }
    pg_port="$(free_port)"
    (cd "$tmp" && "${as_pg[@]}" "$bindir/pg_ctl" -D "$pg_data" -l "$tmp/postgresql.log" -w \
        -o "-p $pg_port -k $tmp -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=120" start >/dev/null)

    # What pg_regress does when it creates the database itself, done on the
    # cluster directly so that every target starts alike.
    "${as_pg[@]}" "$bindir/psql" -X -q -h "$tmp" -p "$pg_port" -U postgres -d postgres \
        -c 'CREATE DATABASE "regression" TEMPLATE=template0' \
        -c "ALTER DATABASE \"regression\" SET lc_messages TO 'C'; ALTER DATABASE \"regression\" SET lc_monetary TO 'C'; ALTER DATABASE \"regression\" SET lc_numeric TO 'C'; ALTER DATABASE \"regression\" SET lc_time TO 'C'; ALTER DATABASE \"regression\" SET bytea_output TO 'hex'; ALTER DATABASE \"regression\" SET timezone_abbreviations TO 'Default'" >/dev/null

    port="$pg_port"
    if [ "$target" != direct ]; then
        port="$(free_port)"
        cat >"$tmp/pgcorral.toml" <<TOML
[pgcorral]
host = "127.0.0.1"
port = $port
unix_socket_dir = "$tmp"
pipeline = "$target"
max_connections = 40
blocking_timeout = "60s"
log_level = "warn"
log_type = "file"
log_path = "$tmp/pgcorral.log"

[server.primary]
host = "127.0.0.1"
port = $pg_port

[[limit]]
database = "all"
user = "all"
max_size = 20
TOML
        "$pgcorral" -c "$tmp/pgcorral.toml" &
        pgcorral_pid=$!
        for _ in $(seq 1 100); do
            port_in_use "$port" && break
            sleep 0.1
        done
    fi

    out="$cache/results/$target"
    rm -rf "$out"
    mkdir -p "$out"
    [ "${#as_pg[@]}" -gt 0 ] && chown postgres: "$out"
    echo "pg_regress.sh: $target: running $total tests through port $port" >&2
    set +e
    (cd "$tmp" && "${as_pg[@]}" env PGHOST=127.0.0.1 "$pgxs_regress" \
        --use-existing --host=127.0.0.1 --port="$port" --user=postgres \
        --inputdir="$src" --outputdir="$out" --dlpath="$dlpath" \
        --bindir="$bindir" --schedule="$schedule" --max-connections=1 \
        >"$out/pg_regress.log" 2>&1)
    set -e
    failed="$(grep -cE '\.\.\. FAILED|^not ok' "$out/pg_regress.log" || true)"
    passed="$(grep -cE '\.\.\. ok|^ok ' "$out/pg_regress.log" || true)"
    [ "$target" != direct ] && cp "$tmp/pgcorral.log" "$out/" 2>/dev/null || true
    summary+=("$(printf '%-12s %3d passed, %3d failed of %d' "$target" "$passed" "$failed" "$total")")
    echo "${summary[-1]}" >&2
    grep -E '\.\.\. FAILED|^not ok' "$out/pg_regress.log" | sed 's/^/    /' >&2 || true
    stop_all
done

echo
echo "PostgreSQL $version regression suite, serial schedule:"
printf '%s\n' "${summary[@]}"
