#!/usr/bin/env bash
# Make sure the services the tests use are up: PostgreSQL on 127.0.0.1:5432 and
# NATS with JetStream on 127.0.0.1:4222. Starts whichever is down (both come from
# Debian's packages on this kind of machine), then waits until each accepts
# connections. Idempotent: running it again with both up changes nothing.
# SERVICES_TIMEOUT (seconds, default 60) bounds the wait for each.
set -euo pipefail

TIMEOUT="${SERVICES_TIMEOUT:-60}"
PG_HOST=127.0.0.1
PG_PORT=5432
NATS_HOST=127.0.0.1
NATS_PORT=4222
NATS_STORE=/var/lib/nats-server

postgres_up() {
  pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t 2
}

nats_up() {
  # NATS greets every client with an INFO line: a listening port alone could be anything.
  local greeting
  greeting="$(timeout 2 bash -c "exec 3<>/dev/tcp/$NATS_HOST/$NATS_PORT && head -c 4 <&3" 2>/dev/null)" || return 1
  [ "$greeting" = "INFO" ]
}

wait_for() {  # wait_for NAME CHECK HINT
  local name="$1" check="$2" hint="$3" deadline=$((SECONDS + TIMEOUT))
  until "$check"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "services.sh: $name is not accepting connections after ${TIMEOUT}s. $hint" >&2
      exit 1
    fi
    sleep 0.5
  done
}

start_postgres() {
  if ! command -v pg_ctlcluster >/dev/null || [ ! -d /etc/postgresql ]; then
    echo "services.sh: PostgreSQL is not installed (apt-get install postgresql)" >&2
    exit 1
  fi
  local version
  # The newest installed major version (one cluster "main" per version on Debian).
  version="$(ls /etc/postgresql | sort -V | tail -n 1)"
  echo "services.sh: starting PostgreSQL $version"
  # "already running" (exit 2) is fine: another caller may have won the race.
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || [ $? -eq 2 ]
}

start_nats() {
  if [ ! -x /usr/sbin/nats-server ]; then
    echo "services.sh: nats-server is not installed (apt-get install nats-server)" >&2
    exit 1
  fi
  echo "services.sh: starting NATS with JetStream"
  mkdir -p "$NATS_STORE"
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
    -a "$NATS_HOST" -p "$NATS_PORT" -js -sd "$NATS_STORE"
}

postgres_up || start_postgres
nats_up || start_nats
wait_for PostgreSQL postgres_up \
  "See /var/log/postgresql/ for why (pg_lsclusters shows the cluster's state)."
wait_for NATS nats_up "Run /usr/sbin/nats-server -a $NATS_HOST -p $NATS_PORT -js -sd $NATS_STORE by hand to see why."
