#!/usr/bin/env bash
# Runs client drivers' own test suites directly against PostgreSQL and
# through pgcorral, and prints passed/failed/skipped per driver and target.
#
#   bash contrib/compat/drivers.sh                       # every driver: direct, session, transaction
#   bash contrib/compat/drivers.sh --driver psycopg transaction direct
#   bash contrib/compat/drivers.sh --driver asyncpg --tests "tests/test_copy.py" transaction
#
# Drivers: psycopg (3), asyncpg. "direct" runs a suite against the cluster
# itself, as the reference the pgcorral targets are compared with.
#
#   --driver NAME   run only this driver (repeatable)
#   --tests ARGS    replace the driver's default test selection (pytest
#                   arguments: paths, -k EXPR, -m EXPR), for short runs
#
# Each driver's source (its test suite) is taken from GitHub at a fixed tag
# (through a bare mirror named by PGCORRAL_COMPAT_<DRIVER>_GIT, or cloned)
# and its Python packages are installed with pip into a virtual environment;
# both are cached in ${PGCORRAL_COMPAT_CACHE:-/var/tmp/pgcorral-compat}.
# Every target gets a fresh throwaway cluster, so no run sees another's
# leftovers. Results go to <cache>/drivers/<driver>/<target>/: the JUnit
# report, the suite's output, pgcorral's log, and failed.txt, skipped.txt,
# passed.txt (one test per line, sorted). At the end the tests that fail
# through pgcorral but not directly are listed per target.
#
# This is an acceptance check, not part of the test suite: a run takes
# several minutes per driver and target.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo="$(pwd)"
here="$repo/contrib/compat"

all_drivers=(psycopg asyncpg)
drivers=()
targets=()
tests_override=""
while [ "$#" -gt 0 ]; do
    case "$1" in
    --driver)
        [ "$#" -ge 2 ] || {
            echo "drivers.sh: --driver needs a name (${all_drivers[*]})" >&2
            exit 2
        }
        drivers+=("$2")
        shift 2
        ;;
    --tests)
        [ "$#" -ge 2 ] || {
            echo "drivers.sh: --tests needs an argument" >&2
            exit 2
        }
        tests_override="$2"
        shift 2
        ;;
    performance | session | transaction | direct)
        targets+=("$1")
        shift
        ;;
    *)
        echo "drivers.sh: unknown argument '$1' (--driver NAME, --tests ARGS, performance, session, transaction, direct)" >&2
        exit 2
        ;;
    esac
done
[ "${#drivers[@]}" -gt 0 ] || drivers=("${all_drivers[@]}")
[ "${#targets[@]}" -gt 0 ] || targets=(direct session transaction)
for d in "${drivers[@]}"; do
    case " ${all_drivers[*]} " in
    *" $d "*) ;;
    *)
        echo "drivers.sh: unknown driver '$d' (${all_drivers[*]})" >&2
        exit 2
        ;;
    esac
done

pg_config_bin="$(compgen -G '/usr/lib/postgresql/*/bin/pg_config' | sort -V | tail -n 1 || true)"
if [ -z "$pg_config_bin" ]; then
    echo "drivers.sh: PostgreSQL server is not installed (run contrib/test.sh or apt-get install postgresql)" >&2
    exit 1
fi
bindir="$(dirname "$pg_config_bin")"

cache="${PGCORRAL_COMPAT_CACHE:-/var/tmp/pgcorral-compat}"
mkdir -p "$cache/src"
python="${PYTHON:-python3}"
# A hung test must cost one test, not the run.
per_test_timeout="${PGCORRAL_COMPAT_TEST_TIMEOUT:-120}"
suite_timeout="${PGCORRAL_COMPAT_SUITE_TIMEOUT:-3600}"

if [ -n "${PGCORRAL_BIN:-}" ]; then
    pgcorral="$PGCORRAL_BIN"
else
    if [ ! -x target/release/pgcorral ] || [ -n "$(find src bin Cargo.toml -newer target/release/pgcorral -print -quit)" ]; then
        cargo build --release --bin pgcorral
    fi
    pgcorral="$repo/target/release/pgcorral"
fi

as_pg=()
if [ "$(id -u)" -eq 0 ]; then
    as_pg=(runuser -u postgres --)
fi

# The source tree of a GitHub repository at a tag, unpacked once into the
# cache. A local bare mirror is used when given; otherwise it is cloned.
git_source() { # NAME GITHUB_REPO TAG -> prints the directory
    local name="$1" gh="$2" tag="$3" dir var gitdir
    dir="$cache/src/$name-$tag"
    if [ ! -d "$dir" ]; then
        var="PGCORRAL_COMPAT_$(echo "$name" | tr 'a-z-' 'A-Z_')_GIT"
        gitdir="${!var:-}"
        rm -rf "$dir.tmp"
        mkdir -p "$dir.tmp"
        if [ -n "$gitdir" ]; then
            git --git-dir="$gitdir" archive "$tag" | tar x -C "$dir.tmp"
        else
            git clone -q --depth 1 --branch "$tag" "https://github.com/$gh.git" "$dir.tmp" >&2
        fi
        mv "$dir.tmp" "$dir"
    fi
    echo "$dir"
}

venv() { # NAME PIP_ARGS... -> prints the venv directory; installs once
    local name="$1" dir
    shift
    dir="$cache/venv-$name"
    if [ ! -f "$dir/.installed" ]; then
        rm -rf "$dir"
        "$python" -m venv "$dir" >&2
        "$dir/bin/pip" install -q --upgrade pip >&2
        "$dir/bin/pip" install -q "$@" >&2
        touch "$dir/.installed"
    fi
    echo "$dir"
}

# ---------------------------------------------------------------- drivers
#
# Each driver has prepare_<driver> (fetch and install, once) and
# run_<driver> TARGET_HOST TARGET_PORT OUTDIR, which runs the suite and
# leaves a JUnit report in OUTDIR/junit.xml. The database "drivers_test"
# exists on every target, next to postgres; the superuser is postgres.

psycopg_tag=3.3.4
psycopg_src=""
psycopg_venv=""
prepare_psycopg() {
    psycopg_src="$(git_source psycopg psycopg/psycopg "$psycopg_tag")"
    psycopg_venv="$(venv psycopg "$psycopg_src/psycopg" "$psycopg_src/psycopg_pool" \
        "psycopg-binary==$psycopg_tag" "anyio>=4.0" "pytest>=6.2.5" "pproxy>=2.7" pytest-timeout)"
}
run_psycopg() { # HOST PORT OUTDIR
    local host="$1" port="$2" out="$3" sel
    # Left out, by the suite's own markers: slow tests (arbitrary waits),
    # timing tests (fail on a loaded machine whatever the target), and the
    # mypy ones (they type-check code and never connect).
    sel=(-m "not slow and not timing and not mypy" tests)
    if [ -n "$tests_override" ]; then
        read -r -a sel <<<"$tests_override"
    fi
    (cd "$psycopg_src" && PSYCOPG_TEST_DSN="host=$host port=$port user=postgres dbname=drivers_test" \
        timeout "$suite_timeout" "$psycopg_venv/bin/python" -m pytest -o cache_dir="$out/.pytest_cache" \
        -o addopts="" --timeout="$per_test_timeout" -q -rN \
        --junitxml="$out/junit.xml" "${sel[@]}")
}

asyncpg_version=0.31.0
asyncpg_src=""
asyncpg_venv=""
prepare_asyncpg() {
    asyncpg_src="$(git_source asyncpg MagicStack/asyncpg "v$asyncpg_version")"
    asyncpg_venv="$(venv asyncpg "asyncpg==$asyncpg_version" pytest pytest-timeout "distro~=1.9.0")"
}
run_asyncpg() { # HOST PORT OUTDIR
    local host="$1" port="$2" out="$3" sel work
    # The installed asyncpg (a compiled wheel) is tested, so the suite runs
    # from a copy of tests/ alone: the source tree's asyncpg/ would shadow it.
    work="$cache/work-asyncpg"
    rm -rf "$work"
    mkdir -p "$work"
    cp -r "$asyncpg_src/tests" "$work/"
    # Left out: test__sourcecode runs flake8 and mypy on the source and
    # never connects; TestConnectionAttributes starts a primary and a hot
    # standby cluster of its own (the suite skips its other such classes
    # itself when PGHOST is set).
    sel=(tests --ignore=tests/test__sourcecode.py
        --deselect tests/test_connect.py::TestConnectionAttributes)
    if [ -n "$tests_override" ]; then
        read -r -a sel <<<"$tests_override"
    fi
    # Tracebacks as its own configuration has them: formatting them from
    # the source can exhaust the parser on deep failures.
    # With PGHOST set, asyncpg's test base uses the running server instead
    # of starting one of its own (asyncpg/_testbase, RunningCluster).
    # Its tests name the database postgres in places, so all of it runs there.
    (cd "$work" && PGHOST="$host" PGPORT="$port" PGUSER=postgres PGDATABASE=postgres \
        timeout "$suite_timeout" "$asyncpg_venv/bin/python" -m pytest -p no:cacheprovider \
        -o addopts="" --timeout="$per_test_timeout" -q -rN --tb=native \
        --junitxml="$out/junit.xml" "${sel[@]}")
}

# ---------------------------------------------------------------- targets

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

# Starts a fresh cluster and, for a pipeline target, pgcorral in front of
# it; sets target_port.
target_port=""
start_target() { # TARGET
    local target="$1" pg_port
    tmp="$(mktemp -d -t pgcorral-drivers.XXXXXX)"
    chmod 755 "$tmp"
    [ "${#as_pg[@]}" -gt 0 ] && chown postgres: "$tmp"
    pg_data="$tmp/data"
    (cd "$tmp" && "${as_pg[@]}" "$bindir/initdb" -D "$pg_data" -U postgres --auth=trust \
        -E UTF8 --locale=C.UTF-8 -N) >"$tmp/initdb.log" 2>&1 || {
        cat "$tmp/initdb.log" >&2
        exit 1
    }
    # Prepared transactions for the two-phase-commit tests; the rest as a
    # development server has it. A port taken between the check and the
    # start is tried again with another.
    local tries=0
    while :; do
        pg_port="$(free_port)"
        (cd "$tmp" && "${as_pg[@]}" "$bindir/pg_ctl" -D "$pg_data" -l "$tmp/postgresql.log" -w \
            -o "-p $pg_port -k $tmp -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200 -c max_prepared_transactions=10" \
            start >/dev/null) && break
        tries=$((tries + 1))
        if [ "$tries" -ge 5 ]; then
            cat "$tmp/postgresql.log" >&2
            exit 1
        fi
    done
    "${as_pg[@]}" "$bindir/psql" -X -q -h "$tmp" -p "$pg_port" -U postgres -d postgres \
        -c 'CREATE DATABASE drivers_test' >/dev/null

    target_port="$pg_port"
    if [ "$target" != direct ]; then
        # Room for every connection a suite holds at once: in session
        # pooling each client holds one for its whole session. The kernel
        # picks pgcorral's port, which is then read from --port-file, so
        # that the suite can never reach another program's server.
        cat >"$tmp/pgcorral.toml" <<TOML
[pgcorral]
host = "127.0.0.1"
port = 0
unix_socket_dir = "$tmp"
pipeline = "$target"
max_connections = 150
blocking_timeout = "30s"
log_level = "info"
log_type = "file"
log_path = "$tmp/pgcorral.log"

[server.primary]
host = "127.0.0.1"
port = $pg_port

[[limit]]
database = "all"
user = "all"
max_size = 140
TOML
        "$pgcorral" -c "$tmp/pgcorral.toml" --port-file "$tmp/pgcorral.port" &
        pgcorral_pid=$!
        target_port=""
        for _ in $(seq 1 300); do
            if [ -s "$tmp/pgcorral.port" ]; then
                target_port="$(cat "$tmp/pgcorral.port")"
                break
            fi
            kill -0 "$pgcorral_pid" 2>/dev/null || break
            sleep 0.1
        done
        if [ -z "$target_port" ]; then
            echo "drivers.sh: pgcorral did not start" >&2
            cat "$tmp/pgcorral.log" >&2 2>/dev/null || true
            exit 1
        fi
    fi
}

summary=()
for driver in "${drivers[@]}"; do
    "prepare_$driver"
    for target in "${targets[@]}"; do
        out="$cache/drivers/$driver/$target"
        rm -rf "$out"
        mkdir -p "$out"
        start_target "$target"
        echo "drivers.sh: $driver, $target: running through port $target_port" >&2
        set +e
        "run_$driver" 127.0.0.1 "$target_port" "$out" >"$out/output.log" 2>&1
        rc=$?
        set -e
        [ "$rc" -eq 124 ] && echo "drivers.sh: $driver, $target: stopped after ${suite_timeout}s" >>"$out/output.log"
        if [ "$target" != direct ]; then
            cp "$tmp/pgcorral.log" "$out/" 2>/dev/null || true
        fi
        cp "$tmp/postgresql.log" "$out/" 2>/dev/null || true
        read -r passed failed skipped < <("$python" "$here/junit_summary.py" "$out/junit.xml" "$out")
        summary+=("$(printf '%-10s %-12s %6d %6d %7d' "$driver" "$target" "$passed" "$failed" "$skipped")")
        echo "${summary[-1]}" >&2
        stop_all
    done
done

echo
printf '%-10s %-12s %6s %6s %7s\n' driver target passed failed skipped
printf '%s\n' "${summary[@]}"
echo
# What fails through pgcorral but passes directly, when both were run
# (now or before: the lists stay in the cache).
for driver in "${drivers[@]}"; do
    direct="$cache/drivers/$driver/direct/failed.txt"
    [ -f "$direct" ] || continue
    for target in "${targets[@]}"; do
        [ "$target" = direct ] && continue
        f="$cache/drivers/$driver/$target/failed.txt"
        [ -f "$f" ] || continue
        only="$(comm -23 "$f" "$direct")"
        echo "$driver, $target: $(printf '%s' "$only" | grep -c . || true) failing only through pgcorral"
        [ -n "$only" ] && printf '%s\n' "$only" | sed 's/^/    /'
    done
done
echo "Results: $cache/drivers/"
