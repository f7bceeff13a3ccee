#!/bin/bash
# Stand-in for the official postgres image's entrypoint (scripts/machine/standin-bases.sh), the part
# the compose stack uses: initialise $PGDATA once (POSTGRES_PASSWORD, POSTGRES_HOST_AUTH_METHOD,
# POSTGRES_DB), listen on every interface, then run the command as the postgres user.
set -euo pipefail
# As the official image: flags alone (Kubernetes `args: ["-c", ...]`) mean `postgres <flags>`.
[ "${1:0:1}" != - ] || set -- postgres "$@"
if [ "${1:-}" = postgres ] && [ "$(id -u)" = 0 ]; then
  mkdir -p "$PGDATA" && chown -R postgres:postgres "$PGDATA" && chmod 700 "$PGDATA"
  if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pwfile=$(mktemp) && echo "${POSTGRES_PASSWORD:-postgres}" > "$pwfile" && chown postgres "$pwfile"
    gosu postgres initdb -D "$PGDATA" -U postgres --pwfile="$pwfile" >/dev/null
    rm -f "$pwfile"
    method=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}
    echo "host all all all $method" >> "$PGDATA/pg_hba.conf"
    if [ -n "${POSTGRES_DB:-}" ] && [ "$POSTGRES_DB" != postgres ]; then
      gosu postgres postgres --single -D "$PGDATA" postgres <<< "CREATE DATABASE \"$POSTGRES_DB\";" >/dev/null
    fi
  fi
  exec gosu postgres "$@" -c listen_addresses='*'
fi
exec "$@"
