#!/usr/bin/env bash
# Install the real servers the termination lab runs (Debian 12 packages).
# Idempotent: returns in well under a second when everything is already there.
# Services are NOT started by the packages' maintainer scripts (temporary policy-rc.d),
# the lab starts its own foreground instances on 127.0.0.1 only.
set -euo pipefail

# gcc + libc6-dev: the pause stand-in of shared-PID pods (app/pause.c) is compiled per scenario
PKGS=(nginx php8.2-fpm apache2 libapache2-mod-php8.2 haproxy util-linux procps tini gcc libc6-dev)

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "install.sh: need root to apt-get install: ${missing[*]}" >&2
    exit 1
  fi
  echo "install.sh: installing ${missing[*]}"
  created_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    created_policy=1
  fi
  cleanup() { if [ "$created_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi; }
  trap cleanup EXIT
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q --no-install-recommends "${missing[@]}"; then
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
fi

PY="${PYTHON:-python3}"
need_py=()
"$PY" -c 'import yaml' 2>/dev/null || need_py+=(PyYAML)
"$PY" -c 'import matplotlib' 2>/dev/null || need_py+=(matplotlib)
if [ "${#need_py[@]}" -gt 0 ]; then
  echo "install.sh: pip installing ${need_py[*]}"
  "$PY" -m pip install -q "${need_py[@]}"
fi

for b in nginx php-fpm8.2 apache2 haproxy unshare nsenter gcc; do
  command -v "$b" >/dev/null || [ -x "/usr/sbin/$b" ] || { echo "install.sh: $b missing" >&2; exit 1; }
done
echo "install.sh: ok"
