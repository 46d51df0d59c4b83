#!/bin/sh
# Starts Redis with the password of the compose secret `redis_password` (`requirepass`), read
# from a config file only the redis user can read: never on a command line, where any user of
# the Docker host would see it (`ps` shows container processes). Refuses to start without it.
set -eu
secret=/run/secrets/redis_password
if [ ! -s "$secret" ]; then
    echo "redis: no password in $secret: put one line (e.g. \`openssl rand -hex 24\`) in" \
        "redis-password next to cctv.toml (mode 0640, group 10001; docs/deploy.md)" >&2
    exit 1
fi
password=$(head -n 1 "$secret" | tr -d '\r')
# It is also written into redis_url (`redis://:{file:...}@redis:6379`): URL-safe characters only.
case "$password" in
    *[!A-Za-z0-9._~-]*)
        echo "redis: the password in $secret may hold only letters, digits and . _ ~ - (it goes into" \
            "redis_url unencoded); make one with \`openssl rand -hex 24\`" >&2
        exit 1 ;;
esac
if [ "${#password}" -lt 16 ]; then
    echo "redis: the password in $secret is shorter than 16 characters" >&2
    exit 1
fi
umask 077
conf=/tmp/redis.conf
{
    printf 'requirepass "%s"\n' "$password"
    printf 'bind 0.0.0.0\nprotected-mode yes\ndir /data\nappendonly yes\nappendfsync everysec\n'
} > "$conf"
exec redis-server "$conf"
