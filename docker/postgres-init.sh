#!/bin/bash
# Runs once when the PostgreSQL container initializes its data directory: creates pgark's role
# (replication for streaming and backups, pg_monitor for the slot / pg_wal / sync-state metrics),
# lets it connect for replication, and names pgark as the synchronous standby.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres <<SQL
CREATE ROLE pgark WITH LOGIN REPLICATION PASSWORD '${PGARK_PASSWORD}';
GRANT pg_monitor TO pgark;
-- ALTER SYSTEM, not -c: commits during this init must not wait for pgark, which is not up yet.
ALTER SYSTEM SET synchronous_standby_names = 'pgark';
SQL
echo "host replication pgark all scram-sha-256" >> "$PGDATA/pg_hba.conf"
