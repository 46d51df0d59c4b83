#!/bin/sh
# Starts nginx-rtmp in its container with a config generated for it: RTMP on 1935, HLS and /stat
# on 8080; publishing only from 127.0.0.1 (the relay container shares this network namespace);
# playing and HLS from 127.0.0.1, this container's own networks (the compose network) and the
# space-separated addresses/CIDRs in CCTV_PLAY_ALLOW (workers on other hosts). The network's
# gateway is refused: the host's published ports come through it, and any user of the host
# could otherwise watch every camera.
set -eu
# /tmp is the container's tmpfs (its root file system is read-only).
work=/tmp/nginx
hls=/dev/shm/cctv-hls
umask 027
mkdir -p "$work" "$hls"
allow="--play-allow 127.0.0.1"
# The networks this container is on, as network addresses (172.18.0.0/16).
for net in $(ip -o -4 route show scope link | awk '{print $1}'); do
    allow="$allow --play-allow $net"
done
for gw in $(ip -o -4 route show default | awk '{print $3}'); do
    allow="$allow --play-deny $gw"
done
for a in ${CCTV_PLAY_ALLOW:-}; do
    allow="$allow --play-allow $a"
done
# shellcheck disable=SC2086
cctv-relay nginx-config --rtmp-listen 0.0.0.0:1935 --http-listen 0.0.0.0:8080 --hls-dir "$hls" \
    --work-dir "$work" $allow > "$work/nginx.conf"
exec nginx -p "$work" -c "$work/nginx.conf" -e stderr
