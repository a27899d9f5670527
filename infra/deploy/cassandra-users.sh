#!/usr/bin/env bash
# Replaces the image's default superuser (cassandra/cassandra) by one with a password of yours, then creates
# the worker (creates and owns the read models' keyspaces) and the read API's user (SELECT only). Idempotent.
set -euo pipefail
cql() { cqlsh cassandra -u "$1" -p "$2" -e "$3"; }
if cql cassandra cassandra "SELECT now() FROM system.local" >/dev/null 2>&1; then
  cql cassandra cassandra "CREATE ROLE IF NOT EXISTS cdcflow_admin WITH PASSWORD = '$CASSANDRA_ADMIN_PASSWORD' AND SUPERUSER = true AND LOGIN = true"
  # Cassandra caches roles for a few seconds: wait until the new superuser can log in.
  for _ in $(seq 30); do
    cql cdcflow_admin "$CASSANDRA_ADMIN_PASSWORD" "SELECT now() FROM system.local" >/dev/null 2>&1 && break
    sleep 1
  done
  cql cdcflow_admin "$CASSANDRA_ADMIN_PASSWORD" "DROP ROLE IF EXISTS cassandra"
fi
admin() { cql cdcflow_admin "$CASSANDRA_ADMIN_PASSWORD" "$1"; }
admin "CREATE ROLE IF NOT EXISTS cdcflow_worker WITH PASSWORD = '$CASSANDRA_WORKER_PASSWORD' AND LOGIN = true"
admin "CREATE ROLE IF NOT EXISTS cdcflow_reader WITH PASSWORD = '$CASSANDRA_READER_PASSWORD' AND LOGIN = true"
admin "GRANT CREATE ON ALL KEYSPACES TO cdcflow_worker"
admin "GRANT SELECT ON ALL KEYSPACES TO cdcflow_worker"
admin "GRANT SELECT ON ALL KEYSPACES TO cdcflow_reader"
