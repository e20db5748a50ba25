#!/usr/bin/env bash
# Runs pgcorral's whole test suite against a real PostgreSQL.
#
# The integration tests start their own throwaway PostgreSQL clusters (initdb
# into a temporary directory, as user postgres when run as root), so all this
# needs is PostgreSQL's server programs and pgbench on the machine; it
# installs them from Debian's packages when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

have_pg_program() {
    compgen -G "/usr/lib/postgresql/*/bin/$1" >/dev/null || command -v "$1" >/dev/null
}

if ! have_pg_program initdb || ! have_pg_program pg_ctl || ! have_pg_program pgbench; then
    echo "test.sh: PostgreSQL server programs or pgbench missing; installing them" >&2
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        sudo="sudo"
    fi
    # On Debian 12 initdb/pg_ctl come with postgresql-15 and pgbench with
    # postgresql-client-15; postgresql-contrib pulls in both.
    $sudo apt-get update
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        postgresql postgresql-contrib
fi

# Two cores: two tests at a time, each with its own PostgreSQL and pgcorral,
# keeps both busy without making the timing-sensitive tests (blocking_timeout,
# shutdown deadlines) flaky. --no-fail-fast so that one broken area does not
# hide the state of the others.
cargo test --no-fail-fast --all-targets -- --test-threads=2
