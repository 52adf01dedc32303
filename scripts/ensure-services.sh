#!/usr/bin/env bash
# Make sure the Postgres and Redis the tests use answer; start local ones if they do not, installing
# them from Debian's packages on a machine that has none (and Chromium, for the browser test of /docs).
set -euo pipefail

PG_HOST=${PG_HOST:-127.0.0.1}
REDIS_HOST=${REDIS_HOST:-127.0.0.1}

pg_up()    { pg_isready -q -h "$PG_HOST" -p 5432 2>/dev/null; }
redis_up() { [ "$(redis-cli -h "$REDIS_HOST" -p 6379 ping 2>/dev/null)" = "PONG" ]; }

install_missing() {
  local packages=()
  command -v pg_ctlcluster >/dev/null || packages+=(postgresql)
  command -v redis-server  >/dev/null || packages+=(redis-server)
  if [ ${#packages[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "installing ${packages[*]}"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
    else
      echo "Postgres and Redis are needed: install ${packages[*]} (or set SWITCHYARD_TEST_PG / SWITCHYARD_TEST_REDIS)" >&2
      exit 1
    fi
  fi
}

if ! pg_up || ! redis_up; then
  install_missing
fi
# tests/test_openapi.py renders /docs in headless Chromium (skipped, saying so, where there is none).
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing chromium"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
    || echo "chromium could not be installed: the browser test of /docs will be skipped" >&2
fi
# tests/test_deploy_metrics.py checks the alert rules and the dashboard's queries with promtool.
if ! command -v promtool >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing promtool (prometheus)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; } \
    || echo "promtool could not be installed: the promtool check of deploy/ will be skipped" >&2
fi
if ! pg_up; then
  echo "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n 1)" main start || true
fi
if ! redis_up; then
  echo "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
fi
for _ in $(seq 1 30); do
  if pg_up && redis_up; then
    exit 0
  fi
  sleep 1
done
pg_up || echo "PostgreSQL at $PG_HOST:5432 does not answer" >&2
redis_up || echo "Redis at $REDIS_HOST:6379 does not answer" >&2
exit 1
