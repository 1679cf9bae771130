#!/bin/sh
# Entrypoint of minicloud/mariadb:local. On first start it initialises the data directory and
# creates the database MARIADB_DATABASE and the user MARIADB_USER (password MARIADB_PASSWORD,
# from any host) with every privilege on it; root logs in through the local socket only. Then it
# runs MariaDB in the foreground.
set -e
datadir=/var/lib/mysql
if [ ! -d "$datadir/mysql" ]; then
    : "${MARIADB_DATABASE:?set MARIADB_DATABASE}" "${MARIADB_USER:?set MARIADB_USER}" "${MARIADB_PASSWORD:?set MARIADB_PASSWORD}"
    mariadb-install-db --datadir="$datadir" --skip-test-db --auth-root-authentication-method=socket >/dev/null
    mariadbd --bootstrap --datadir="$datadir" --skip-networking --socket=/tmp/mysqld.sock >/dev/null <<SQL
FLUSH PRIVILEGES;
CREATE DATABASE IF NOT EXISTS \`$MARIADB_DATABASE\`;
CREATE USER '$MARIADB_USER'@'%' IDENTIFIED BY '$MARIADB_PASSWORD';
GRANT ALL PRIVILEGES ON \`$MARIADB_DATABASE\`.* TO '$MARIADB_USER'@'%';
CREATE USER '$MARIADB_USER'@'localhost' IDENTIFIED BY '$MARIADB_PASSWORD';
GRANT ALL PRIVILEGES ON \`$MARIADB_DATABASE\`.* TO '$MARIADB_USER'@'localhost';
FLUSH PRIVILEGES;
SQL
fi
exec mariadbd --datadir="$datadir" --bind-address=0.0.0.0 --socket=/tmp/mysqld.sock --pid-file=/tmp/mysqld.pid "$@"
