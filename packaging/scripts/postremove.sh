#!/bin/sh
# ferry postremove (deb postrm, rpm %postun): forget the removed unit.
set -e
if [ -z "${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload >/dev/null 2>&1 || true
fi
exit 0
