#!/bin/sh
# Entrypoint of minicloud/redis:local: Redis with the password from REDIS_PASSWORD (written to a
# configuration file readable by the redis user only, so that it is not on the command line),
# data in /data, snapshots to /data/dump.rdb (at most every hour, and on BGSAVE).
set -e
umask 077
config=/tmp/redis.conf
{
    echo "bind 0.0.0.0"
    echo "protected-mode no"
    echo "dir /data"
    echo "dbfilename dump.rdb"
    echo "appendonly no"
    echo "save 3600 1"
    echo "requirepass ${REDIS_PASSWORD:?set REDIS_PASSWORD}"
} > "$config"
exec redis-server "$config" "$@"
