#!/bin/sh
# ferry postinstall (deb postinst, rpm %post): make systemd see the unit and
# enable it; never start it on a first install, since the configuration
# must be edited first. On an upgrade restart it if it was running.
set -e

# deb: $1 is "configure" and $2 the version upgraded from (empty on a first
# install). rpm: $1 is the number of ferry packages installed afterwards.
upgrade=no
case "$1" in
  configure) [ -n "$2" ] && upgrade=yes ;;
  [2-9]*) upgrade=yes ;;
  abort-*) exit 0 ;;
esac

if [ "$upgrade" = no ]; then
  echo "ferry: edit /etc/ferry/ferry.yaml, check it with 'ferry check', then 'systemctl start ferry'"
fi

# DPKG_ROOT is set when dpkg installs into another root (dpkg --root
# --force-script-chrootless): enable the unit there, touch nothing running.
if [ -n "${DPKG_ROOT:-}" ]; then
  systemctl --root="$DPKG_ROOT" enable ferry.service >/dev/null 2>&1 || true
  exit 0
fi
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload >/dev/null 2>&1 || true
  if [ "$upgrade" = yes ]; then
    systemctl try-restart ferry.service >/dev/null 2>&1 || true
  fi
fi
if command -v systemctl >/dev/null 2>&1; then
  systemctl enable ferry.service >/dev/null 2>&1 || true
fi
exit 0
