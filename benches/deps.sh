#!/usr/bin/env bash
# Installs the peers benches/run.sh compares doorman with (Debian, as root):
# tcpserver (ucspi-tcp), tcpsvd (busybox), socat and systemd-socket-activate
# (systemd) with apt-get; xinetd and openbsd-inetd conflict with each other
# (both provide inet-superserver) and would start system daemons, so their
# packages are only unpacked into /opt/doorman-peers (their libraries are
# installed normally). The bench starts every peer itself, on loopback.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
    ucspi-tcp busybox systemd socat strace gcc libc6-dev \
    libselinux1 libtirpc3 libwrap0 libbsd0 libevent-2.1-7 libsystemd0 >/dev/null
dest=/opt/doorman-peers
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download -qq xinetd openbsd-inetd)
$SUDO mkdir -p "$dest"
for deb in "$tmp"/*.deb; do $SUDO dpkg-deb -x "$deb" "$dest"; done
ls "$dest/usr/sbin/xinetd" "$dest/usr/sbin/inetd" >/dev/null
