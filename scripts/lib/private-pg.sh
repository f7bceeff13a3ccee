#!/usr/bin/env bash
# A throwaway PostgreSQL cluster (and PgBouncer in front of it) in a directory of its own: the
# one fixture of the db-replicas scenario, used by scripts/ci/k6-replicas.sh and by the Rust tests
# (tests/scenarios/common/private_pg.rs runs this script). Runs the servers as `postgres` when
# called as root (initdb and pgbouncer refuse root).
#
#   private-pg.sh start DIR MAX_CONNECTIONS [RESERVED]   initdb + start; role `app`, database
#                                                         `lab`; prints the port
#   private-pg.sh stop DIR [fast|immediate]              stop (fast: sessions terminated)
#   private-pg.sh restart DIR                            start again, same port and data
#   private-pg.sh bouncer DIR PG_PORT POOL               PgBouncer, transaction mode, POOL server
#                                                         connections; prints its port
#   private-pg.sh bouncer-stop DIR
#   private-pg.sh refusals DIR                           connections refused for want of slots
set -euo pipefail
LOG_TAG=private-pg
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

pg_bin() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -x "$dir/$1" ] || die "$1 not found under /usr/lib/postgresql (scripts/ensure-services.sh)"
  echo "$dir/$1"
}

cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || die "usage: private-pg.sh start|stop|restart|bouncer|bouncer-stop|refusals DIR ..."

case $cmd in
  start)
    max=${3:?MAX_CONNECTIONS}
    reserved=${4:-3}
    mkdir -p "$dir"
    [ "$(id -u)" != 0 ] || chown postgres:postgres "$dir"
    as_pg "$(pg_bin initdb)" -A trust -U postgres --no-sync -D "$dir/data" >/dev/null
    port=$(free_port)
    cat >> "$dir/data/postgresql.conf" <<CONF
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
max_connections = $max
superuser_reserved_connections = $reserved
fsync = off
shared_buffers = 16MB
CONF
    as_pg "$(pg_bin pg_ctl)" -w -t 30 -D "$dir/data" -l "$dir/server.log" start >/dev/null
    psql -qAt -h 127.0.0.1 -p "$port" -U postgres -v ON_ERROR_STOP=1 \
      -c "CREATE ROLE app LOGIN" -c "CREATE DATABASE lab OWNER app" >/dev/null
    echo "$port"
    ;;
  stop)
    as_pg "$(pg_bin pg_ctl)" -w -m "${3:-fast}" -D "$dir/data" stop >/dev/null
    ;;
  restart)
    as_pg "$(pg_bin pg_ctl)" -w -t 30 -D "$dir/data" -l "$dir/server.log" start >/dev/null
    ;;
  bouncer)
    pg_port=${3:?PG_PORT}
    pool=${4:?POOL}
    bin=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
    [ -x "$bin" ] || die "pgbouncer not found (scripts/ensure-services.sh installs it)"
    port=$(free_port)
    cat > "$dir/pgbouncer.ini" <<INI
[databases]
lab = host=127.0.0.1 port=$pg_port dbname=lab user=app
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = trust
auth_file = $dir/userlist.txt
pool_mode = transaction
default_pool_size = $pool
max_db_connections = $pool
max_client_conn = 500
; a failed server login fails every client for server_login_retry (15 s by default): retry at once
server_login_retry = 1
ignore_startup_parameters = extra_float_digits
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
INI
    echo '"app" ""' > "$dir/userlist.txt"
    [ "$(id -u)" != 0 ] || chown postgres:postgres "$dir/pgbouncer.ini" "$dir/userlist.txt"
    as_pg "$bin" -d "$dir/pgbouncer.ini" >/dev/null 2>&1
    wait_tcp "$port" || die "pgbouncer did not listen on $port ($(tail -3 "$dir/pgbouncer.log" 2>/dev/null))"
    echo "$port"
    ;;
  bouncer-stop)
    [ -f "$dir/pgbouncer.pid" ] && kill "$(cat "$dir/pgbouncer.pid")" 2>/dev/null || true
    ;;
  refusals)
    grep -cE "too many clients already|remaining connection slots are reserved" "$dir/server.log" || true
    ;;
  *)
    die "unknown command $cmd"
    ;;
esac
