#!/usr/bin/env bash
# The PostgreSQL server the store tests use, at 127.0.0.1:5432 (AIINFRA_TEST_PG_URL overrides).
# Already running on the development and CI machines; elsewhere installed and started when root,
# else the PostgreSQL tests are skipped, loudly.
set -uo pipefail
ready() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null || (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; }
ready && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "WARNING: no PostgreSQL at 127.0.0.1:5432 and not root to install one: the PostgreSQL store tests will be SKIPPED" >&2
  exit 0
fi
if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
  echo "installing PostgreSQL (apt) for the store tests..."
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  ver=$(ls /etc/postgresql | sort -V | tail -1)
  # a server installed only for these tests: trust loopback connections, as on the CI machines
  sed -i '1i host all all 127.0.0.1/32 trust' "/etc/postgresql/$ver/main/pg_hba.conf"
fi
ver=$(ls /etc/postgresql | sort -V | tail -1)
pg_ctlcluster --skip-systemctl-redirect "$ver" main start 2>/dev/null || true
for _ in $(seq 30); do ready && exit 0; sleep 1; done
echo "WARNING: PostgreSQL did not start at 127.0.0.1:5432: the PostgreSQL store tests will be SKIPPED" >&2
