#!/usr/bin/env bash
# Install the real servers used by the integration tests (tests/servers.py) and
# the benchmark tools, from Debian's archive.  Idempotent: a no-op when
# everything is already installed; `apt-get update` only runs when needed.
#
# The tests start their own private instances (127.0.0.1, free ports, temp dirs),
# so the packaged services must NOT be left running: service start-up is denied
# during the install (policy-rc.d) and any clickhouse/nginx service that is
# running afterwards is stopped.
set -euo pipefail

# chromium: the browser tests (tests/test_dashboard_browser.py, tests/test_extension.py; Playwright drives it)
PACKAGES=(clickhouse-server clickhouse-client nats-server pebble wrk nginx-light chromium)

export DEBIAN_FRONTEND=noninteractive
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo -E"
fi

log() { echo "install-servers: $*" >&2; }

missing=()
for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    if [ "$status" != "install ok installed" ]; then
        missing+=("$pkg")
    fi
done

lists_present() {
    compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null
}

apt_install() {
    $SUDO apt-get install -y --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@"
}

if [ "${#missing[@]}" -gt 0 ]; then
    log "installing: ${missing[*]}"

    # Deny service start-up by maintainer scripts while we install, unless the
    # machine already has a policy (containers usually do).
    policy=/usr/sbin/policy-rc.d
    added_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
        $SUDO chmod 755 "$policy"
        added_policy=1
    fi
    cleanup_policy() {
        if [ "$added_policy" = 1 ]; then
            $SUDO rm -f "$policy"
        fi
    }
    trap cleanup_policy EXIT

    updated=0
    if ! lists_present; then
        $SUDO apt-get update
        updated=1
    fi
    if ! apt_install "${missing[@]}"; then
        if [ "$updated" = 1 ]; then
            exit 1
        fi
        log "install failed; refreshing package lists and retrying"
        $SUDO apt-get update
        apt_install "${missing[@]}"
    fi
    cleanup_policy
    trap - EXIT
else
    log "all packages already installed: ${PACKAGES[*]}"
fi

# Defensive: no packaged clickhouse/nginx may hold ports (8123/9000/9009/80).
# Only the *service* instances are stopped (systemd unit, or the pid file /
# service user of the init.d scripts): Debian's /etc/init.d/clickhouse-server
# stop would kill every clickhouse-server binary, including test instances.
stop_pid() {
    local pid=$1 what=$2 i
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        log "stopping $what (pid $pid)"
        $SUDO kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 1 60); do
            kill -0 "$pid" 2>/dev/null || return 0
            sleep 0.5
        done
        $SUDO kill -KILL "$pid" 2>/dev/null || true
    fi
}
stop_service() {
    local name=$1 pidfile=$2 user=$3 binary=$4 pid
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        if systemctl is-active --quiet "$name" 2>/dev/null; then
            log "stopping systemd service $name"
            $SUDO systemctl stop "$name" || true
        fi
        $SUDO systemctl disable --quiet "$name" 2>/dev/null || true
    fi
    if [ -s "$pidfile" ]; then
        stop_pid "$(head -n1 "$pidfile" | tr -dc 0-9)" "$name service"
    fi
    if [ -n "$user" ] && id -u "$user" >/dev/null 2>&1 && command -v pgrep >/dev/null 2>&1; then
        for pid in $(pgrep -u "$user" -f "^$binary" || true); do
            stop_pid "$pid" "$name service"
        done
    fi
}
stop_service clickhouse-server /var/run/clickhouse-server.pid clickhouse /usr/sbin/clickhouse-server
stop_service nginx /run/nginx.pid "" /usr/sbin/nginx

for bin in /usr/sbin/clickhouse-server /usr/sbin/nats-server /usr/bin/pebble \
    /usr/bin/pebble-challtestsrv /usr/bin/clickhouse-client /usr/bin/wrk /usr/sbin/nginx; do
    if [ ! -x "$bin" ]; then
        log "missing after install: $bin"
        exit 1
    fi
done
log "ok"
