#!/usr/bin/env bash
# Builds the container images minicloud's examples and tests use, from Debian packages, on a
# machine where no registry can be reached:
#
#   minicloud/web:local       busybox httpd on port 8080 serving /www (about 2 MB; CGIs whoami,
#                             burn and headers, which echoes the request);
#                             /cgi-bin/whoami answers with the container's hostname,
#                             /cgi-bin/burn?ms=N keeps a CPU busy for N ms (at most 2000)
#   minicloud/haproxy:local   HAProxy 2.6 from Debian, run as `haproxy -W -db -f CONFIG`
#   minicloud/postgres:local  PostgreSQL 15 from Debian (built with mmdebstrap; slowest); it
#                             initialises its data directory on first start: set
#                             POSTGRES_PASSWORD (optionally POSTGRES_USER, POSTGRES_DB)
#   minicloud/redis:local     Redis 7 from Debian (mmdebstrap); set REDIS_PASSWORD; data in /data
#   minicloud/mariadb:local   MariaDB 10.11 from Debian (mmdebstrap); on first start set
#                             MARIADB_DATABASE, MARIADB_USER, MARIADB_PASSWORD
#   minicloud/nats:local      nats-server 2.9 from Debian with JetStream (file storage in
#                             /data; monitoring on 8222)
#
# Usage: scripts/local-images.sh [--rebuild] [web] [haproxy] [postgres] [redis] [mariadb] [nats]
#        (default: all of them)
# An image that exists already is kept unless --rebuild is given or it is older than this
# script's recipe (the image label minicloud.dev/image-version). Missing Debian packages
# (busybox-static, haproxy, mmdebstrap, nats-server) are installed when running as root.
set -euo pipefail

rebuild=false
wanted=()
for argument in "$@"; do
    case "$argument" in
        --rebuild) rebuild=true ;;
        web | haproxy | postgres | redis | mariadb | nats) wanted+=("$argument") ;;
        *) echo "usage: $0 [--rebuild] [web] [haproxy] [postgres] [redis] [mariadb] [nats]" >&2; exit 2 ;;
    esac
done
[ ${#wanted[@]} -eq 0 ] && wanted=(web haproxy postgres redis mariadb nats)

command -v docker >/dev/null || { echo "local-images: docker is not installed" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "local-images: the Docker engine does not answer (is dockerd running?)" >&2; exit 1; }

ensure_packages() {
    local missing=()
    for package in "$@"; do
        dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
    done
    [ ${#missing[@]} -eq 0 ] && return
    if [ "$(id -u)" -ne 0 ]; then
        echo "local-images: install these Debian packages first: ${missing[*]}" >&2
        exit 1
    fi
    echo "local-images: installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 || {
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    }
}

# needed IMAGE VERSION: whether IMAGE must be built (missing, older recipe, or --rebuild).
needed() {
    local image="$1" version="$2" found
    if ! $rebuild && found="$(docker image inspect -f '{{index .Config.Labels "minicloud.dev/image-version"}}' "$image" 2>/dev/null)"; then
        if [ "$found" = "$version" ]; then
            echo "local-images: $image exists (use --rebuild to rebuild it)"
            return 1
        fi
        echo "local-images: $image is from an older recipe; rebuilding"
    fi
    return 0
}

label_args=(--label minicloud.dev/image=local)

build_web() {
    local image=minicloud/web:local version=3
    needed "$image" "$version" || return 0
    ensure_packages busybox-static
    local context
    context="$(mktemp -d)"
    mkdir -p "$context/www/cgi-bin"
    cp /bin/busybox "$context/busybox"
    cat > "$context/www/index.html" <<'EOF'
<!doctype html>
<title>minicloud</title>
<h1>Hello from minicloud</h1>
<p>This page is served by busybox httpd in a container that minicloud manages.</p>
EOF
    cat > "$context/www/cgi-bin/whoami" <<'EOF'
#!/bin/sh
echo "Content-Type: text/plain"
echo
hostname
EOF
    # Busy for ?ms=N milliseconds (default 200, at most 2000), measured on /proc/uptime
    # (busybox's date has no sub-second format), then answers with the hostname.
    cat > "$context/www/cgi-bin/burn" <<'EOF'
#!/bin/sh
ms=200
case "$QUERY_STRING" in
ms=[0-9]*) ms="${QUERY_STRING#ms=}"; ms="${ms%%[!0-9]*}" ;;
esac
[ "$ms" -gt 2000 ] && ms=2000
# Uptime in hundredths: "298.06" -> 29806 (joined, as "06" is no valid octal number).
read -r now _ < /proc/uptime
end=$(( ${now%.*}${now#*.} + ms / 10 ))
while :; do
    read -r now _ < /proc/uptime
    [ "${now%.*}${now#*.}" -ge "$end" ] && break
done
echo "Content-Type: text/plain"
echo
hostname
EOF
    # Echoes the request as the backend saw it: method, URI and every header (HTTP_*), with the
    # container's hostname and its ROLE variable (tests name their containers' roles).
    cat > "$context/www/cgi-bin/headers" <<'EOF'
#!/bin/sh
echo "Content-Type: text/plain"
echo
echo "host $(hostname)"
echo "role $ROLE"
echo "method $REQUEST_METHOD"
echo "uri $REQUEST_URI"
env | grep '^HTTP_' | sort
EOF
    # With `-c /www/httpd.conf`, a missing page answers /www/404.html (tests write an identity
    # there, so that every path tells which container served it).
    echo "E404:/www/404.html" > "$context/www/httpd.conf"
    echo "not found" > "$context/www/404.html"
    chmod +x "$context/www/cgi-bin/whoami" "$context/www/cgi-bin/burn" "$context/www/cgi-bin/headers"
    cat > "$context/Dockerfile" <<'EOF'
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
COPY www /www
EXPOSE 8080
CMD ["httpd", "-f", "-v", "-p", "8080", "-h", "/www"]
EOF
    docker build -q "${label_args[@]}" --label "minicloud.dev/image-version=$version" -t "$image" "$context" >/dev/null
    rm -rf "$context"
    echo "local-images: built $image"
}

# copy_with_libraries BINARY ROOT: the binary, every library it loads and the loader, at their
# own paths under ROOT (a scratch image's file system).
copy_with_libraries() {
    local binary="$1" root="$2"
    mkdir -p "$root$(dirname "$binary")" "$root/lib64"
    cp "$binary" "$root$binary"
    ldd "$binary" | grep -o '/[^ ]*' | while read -r library; do
        mkdir -p "$root$(dirname "$library")"
        cp -L "$library" "$root$library"
    done
    cp -L /lib64/ld-linux-x86-64.so.2 "$root/lib64/"
}

build_haproxy() {
    local image=minicloud/haproxy:local version=1
    needed "$image" "$version" || return 0
    ensure_packages haproxy
    local context
    context="$(mktemp -d)"
    mkdir -p "$context/root/usr/sbin" "$context/root/etc" "$context/root/usr/local/etc/haproxy" "$context/root/run" "$context/root/tmp"
    copy_with_libraries /usr/sbin/haproxy "$context/root"
    printf 'root:x:0:0:root:/:/bin/false\nhaproxy:x:99:99:haproxy:/:/bin/false\n' > "$context/root/etc/passwd"
    printf 'root:x:0:\nhaproxy:x:99:\n' > "$context/root/etc/group"
    cat > "$context/root/usr/local/etc/haproxy/haproxy.cfg" <<'EOF'
# Placeholder: minicloud mounts the generated configuration over this file.
global
    log stdout format raw local0
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend placeholder
    bind :8080
    http-request return status 503 content-type text/plain string "no configuration yet"
EOF
    cat > "$context/Dockerfile" <<'EOF'
FROM scratch
COPY root /
EXPOSE 8080
ENTRYPOINT ["/usr/sbin/haproxy", "-W", "-db", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]
EOF
    docker build -q "${label_args[@]}" --label "minicloud.dev/image-version=$version" -t "$image" "$context" >/dev/null
    rm -rf "$context"
    echo "local-images: built $image"
}

build_nats() {
    local image=minicloud/nats:local version=1
    needed "$image" "$version" || return 0
    ensure_packages nats-server
    local context
    context="$(mktemp -d)"
    mkdir -p "$context/root/usr/sbin" "$context/root/etc" "$context/root/data" "$context/root/tmp"
    copy_with_libraries /usr/sbin/nats-server "$context/root"
    printf 'root:x:0:0:root:/:/bin/false\n' > "$context/root/etc/passwd"
    printf 'root:x:0:\n' > "$context/root/etc/group"
    cat > "$context/Dockerfile" <<'EOF'
FROM scratch
COPY root /
EXPOSE 4222 8222
VOLUME /data
ENTRYPOINT ["/usr/sbin/nats-server", "--jetstream", "--store_dir", "/data", "--http_port", "8222"]
EOF
    docker build -q "${label_args[@]}" --label "minicloud.dev/image-version=$version" -t "$image" "$context" >/dev/null
    rm -rf "$context"
    echo "local-images: built $image"
}

# The host's own apt sources, so that images are built from the same mirror (or proxy).
apt_sources() {
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        echo /etc/apt/sources.list.d/debian.sources
    elif [ -f /etc/apt/sources.list ]; then
        echo /etc/apt/sources.list
    fi
}

build_postgres() {
    local image=minicloud/postgres:local version=2
    needed "$image" "$version" || return 0
    ensure_packages mmdebstrap
    local work
    work="$(mktemp -d)"
    echo "local-images: building $image with mmdebstrap (about a minute)"
    local entrypoint
    entrypoint="$(cd "$(dirname "$0")" && pwd)/images/postgres-entrypoint.sh"
    # shellcheck disable=SC2046
    mmdebstrap --quiet --variant=apt --include=postgresql-15,locales-all \
        --customize-hook='chroot "$1" sh -c "rm -rf /var/lib/postgresql/15/main /etc/postgresql; mkdir -p /var/lib/postgresql/data /var/run/postgresql; chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql"' \
        --customize-hook="copy-in $entrypoint /usr/local/bin" \
        bookworm "$work/rootfs.tar" $(apt_sources)
    docker import \
        --change 'ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV PGDATA=/var/lib/postgresql/data' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'USER postgres' \
        --change 'EXPOSE 5432' \
        --change 'LABEL minicloud.dev/image=local' \
        --change "LABEL minicloud.dev/image-version=$version" \
        --change 'ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]' \
        "$work/rootfs.tar" "$image" >/dev/null
    rm -rf "$work"
    echo "local-images: built $image"
}

build_redis() {
    local image=minicloud/redis:local version=1
    needed "$image" "$version" || return 0
    ensure_packages mmdebstrap
    local work
    work="$(mktemp -d)"
    echo "local-images: building $image with mmdebstrap (about a minute)"
    local entrypoint
    entrypoint="$(cd "$(dirname "$0")" && pwd)/images/redis-entrypoint.sh"
    # shellcheck disable=SC2046
    mmdebstrap --quiet --variant=essential --include=redis-server,redis-tools \
        --customize-hook='chroot "$1" sh -c "mkdir -p /data && chown redis:redis /data"' \
        --customize-hook="copy-in $entrypoint /usr/local/bin" \
        bookworm "$work/rootfs.tar" $(apt_sources)
    docker import \
        --change 'USER redis' \
        --change 'WORKDIR /data' \
        --change 'EXPOSE 6379' \
        --change 'LABEL minicloud.dev/image=local' \
        --change "LABEL minicloud.dev/image-version=$version" \
        --change 'ENTRYPOINT ["/usr/local/bin/redis-entrypoint.sh"]' \
        "$work/rootfs.tar" "$image" >/dev/null
    rm -rf "$work"
    echo "local-images: built $image"
}

build_mariadb() {
    local image=minicloud/mariadb:local version=4
    needed "$image" "$version" || return 0
    ensure_packages mmdebstrap
    local work
    work="$(mktemp -d)"
    echo "local-images: building $image with mmdebstrap (about a minute)"
    local entrypoint
    entrypoint="$(cd "$(dirname "$0")" && pwd)/images/mariadb-entrypoint.sh"
    # shellcheck disable=SC2046
    mmdebstrap --quiet --variant=essential --include=mariadb-server,mariadb-client \
        --customize-hook='chroot "$1" sh -c "rm -rf /var/lib/mysql; mkdir -p /var/lib/mysql /run/mysqld; chown mysql:mysql /var/lib/mysql /run/mysqld"' \
        --customize-hook="copy-in $entrypoint /usr/local/bin" \
        bookworm "$work/rootfs.tar" $(apt_sources)
    docker import \
        --change 'USER mysql' \
        --change 'EXPOSE 3306' \
        --change 'LABEL minicloud.dev/image=local' \
        --change "LABEL minicloud.dev/image-version=$version" \
        --change 'ENTRYPOINT ["/usr/local/bin/mariadb-entrypoint.sh"]' \
        "$work/rootfs.tar" "$image" >/dev/null
    rm -rf "$work"
    echo "local-images: built $image"
}

for name in "${wanted[@]}"; do
    "build_$name"
done
