#!/bin/sh
# Entrypoint of minicloud/mariadb:local. On first start it initialises the data directory and
# creates the database MARIADB_DATABASE and the user MARIADB_USER (password MARIADB_PASSWORD,
# from any host) with every privilege on it; root logs in through the local socket only. Then it
# runs MariaDB in the foreground.
#
# The initialisation is atomic: it happens in a scratch directory on the volume, which is moved
# into place (one rename) only once the users exist, so a container stopped half-way leaves
# nothing that would later start without them; the next start begins again. Volumes
# initialised by earlier images hold the data directory at their root and keep it there.
set -e
volume=/var/lib/mysql
if [ -d "$volume/mysql" ]; then
    datadir="$volume"
else
    datadir="$volume/data"
fi
if [ ! -d "$datadir/mysql" ]; then
    : "${MARIADB_DATABASE:?set MARIADB_DATABASE}" "${MARIADB_USER:?set MARIADB_USER}" "${MARIADB_PASSWORD:?set MARIADB_PASSWORD}"
    scratch="$volume/.initialising"
    rm -rf "$scratch"
    mariadb-install-db --datadir="$scratch" --skip-test-db --auth-root-authentication-method=socket >/dev/null
    mariadbd --bootstrap --datadir="$scratch" --skip-networking --socket=/tmp/mysqld-init.sock >/dev/null <<SQL
FLUSH PRIVILEGES;
CREATE DATABASE IF NOT EXISTS \`$MARIADB_DATABASE\`;
CREATE USER '$MARIADB_USER'@'%' IDENTIFIED BY '$MARIADB_PASSWORD';
GRANT ALL PRIVILEGES ON \`$MARIADB_DATABASE\`.* TO '$MARIADB_USER'@'%';
CREATE USER '$MARIADB_USER'@'localhost' IDENTIFIED BY '$MARIADB_PASSWORD';
GRANT ALL PRIVILEGES ON \`$MARIADB_DATABASE\`.* TO '$MARIADB_USER'@'localhost';
FLUSH PRIVILEGES;
SQL
    sync
    mv "$scratch" "$datadir"
    sync
fi
exec mariadbd --datadir="$datadir" --bind-address=0.0.0.0 --socket=/tmp/mysqld.sock --pid-file=/tmp/mysqld.pid "$@"
