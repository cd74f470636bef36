#!/bin/sh
# ferry preremove (deb prerm, rpm %preun): on removal, not on upgrade, stop
# and disable the service. The buffer in /var/lib/ferry is kept: it may hold
# messages not yet forwarded.
set -e

# deb: $1 is "remove" or "upgrade"; rpm: $1 is 0 on removal, 1 on upgrade.
case "$1" in
  remove|0) ;;
  *) exit 0 ;;
esac
if [ -n "${DPKG_ROOT:-}" ]; then
  systemctl --root="$DPKG_ROOT" disable ferry.service >/dev/null 2>&1 || true
  exit 0
fi
if [ -d /run/systemd/system ]; then
  systemctl stop ferry.service >/dev/null 2>&1 || true
fi
if command -v systemctl >/dev/null 2>&1; then
  systemctl disable ferry.service >/dev/null 2>&1 || true
fi
exit 0
