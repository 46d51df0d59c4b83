#!/bin/sh
# Redis health: PONG to an authenticated PING (the password in redis-cli's environment, not on
# its command line).
REDISCLI_AUTH="$(head -n 1 /run/secrets/redis_password | tr -d '\r')" redis-cli --no-auth-warning ping | grep -qx PONG
