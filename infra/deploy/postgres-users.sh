#!/usr/bin/env bash
# Run once by the postgres image on a fresh volume (docker-entrypoint-initdb.d): the worker creates (and owns)
# the read models' schemas, the read API's user may only read them.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username postgres --dbname cdcflow \
     -v worker_pw="$POSTGRES_WORKER_PASSWORD" -v reader_pw="$POSTGRES_READER_PASSWORD" <<'SQL'
CREATE ROLE cdcflow_worker LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'worker_pw';
CREATE ROLE cdcflow_reader LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'reader_pw';
ALTER ROLE cdcflow_reader SET default_transaction_read_only = on;
REVOKE CREATE, TEMPORARY ON DATABASE cdcflow FROM PUBLIC;
GRANT CONNECT ON DATABASE cdcflow TO cdcflow_worker, cdcflow_reader;
GRANT CREATE, TEMPORARY ON DATABASE cdcflow TO cdcflow_worker;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
ALTER DEFAULT PRIVILEGES FOR ROLE cdcflow_worker GRANT USAGE ON SCHEMAS TO cdcflow_reader;
ALTER DEFAULT PRIVILEGES FOR ROLE cdcflow_worker GRANT SELECT ON TABLES TO cdcflow_reader;
SQL
