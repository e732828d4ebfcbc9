#!/bin/sh
# Runs once, from /docker-entrypoint-initdb.d, when the postgres container
# initializes an empty data directory, after the reference schema
# (10-dzdesk-schema.sql): the dzhook role (role.sql) and what only the
# tables' owner can do (publication.sql). dzhook then runs as that role with
# source.auto_setup: false.
#
# The entrypoint runs it against a temporary server on the Unix socket, as
# POSTGRES_USER; PGHOST and PGPORT work too, so the deploy tests run it
# against a throwaway cluster. SQL_DIR is where role.sql and
# publication.sql are mounted.
set -e
sql_dir="${SQL_DIR:-/dzhook-sql}"
if [ -z "$DB_DZHOOK_PASSWORD" ]; then
	echo "initdb.sh: DB_DZHOOK_PASSWORD is empty: set the dzhook role's password" >&2
	exit 1
fi
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
	-v password="$DB_DZHOOK_PASSWORD" -f "$sql_dir/role.sql"
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
	-f "$sql_dir/publication.sql"
