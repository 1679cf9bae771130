#!/bin/sh
# Entrypoint of minicloud/postgres:local. Initialises the data directory on first start
# (superuser password from POSTGRES_PASSWORD, optional POSTGRES_USER and POSTGRES_DB; password
# authentication for clients on the network), then runs PostgreSQL in the foreground.
#
# The initialisation is atomic: it happens in a scratch directory on the volume, which is moved
# into place (one rename) only once it is complete, so a container stopped half-way leaves no
# data directory that would later start without its users or its pg_hba.conf line; the next
# start begins again from nothing. Volumes initialised by earlier images hold the data
# directory at their root and keep it there.
set -e
volume=/var/lib/postgresql/data
if [ -s "$volume/PG_VERSION" ]; then
    PGDATA="$volume"
else
    PGDATA="$volume/pgdata"
fi
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    scratch="$volume/.initialising"
    rm -rf "$scratch"
    password_file="$(mktemp)"
    printf '%s' "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}" > "$password_file"
    initdb --pgdata="$scratch" --username="${POSTGRES_USER:-postgres}" --pwfile="$password_file" \
        --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 >/dev/null
    rm -f "$password_file"
    echo "host all all all scram-sha-256" >> "$scratch/pg_hba.conf"
    if [ -n "${POSTGRES_DB:-}" ]; then
        echo "CREATE DATABASE \"$POSTGRES_DB\";" | postgres --single -D "$scratch" postgres >/dev/null
    fi
    sync
    mv "$scratch" "$PGDATA"
    sync
fi
export PGDATA
exec postgres -D "$PGDATA" -c listen_addresses='*' -c unix_socket_directories=/tmp "$@"
