#!/usr/bin/env bash
# Installs the Debian packages the test suite drives for real (mosquitto, and
# chromium for the dashboard page), when
# they are missing and we can (root with apt). Otherwise it fails and says what
# to install: a missing service is never a silent skip.
set -euo pipefail
need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_sub >/dev/null 2>&1 || need+=(mosquitto-clients)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# a real Prometheus scrapes the gateway's /metrics (tests/security/test_http_metrics.py)
command -v prometheus >/dev/null 2>&1 || [ -x /usr/bin/prometheus ] || need+=(prometheus)
# RabbitMQ: the backend tests (tests/backends) use the one at AMQP_URL, by
# default the machine's own on 127.0.0.1:5672 (guest/guest). If that one is
# installed but not running, start it (the tests never stop it); otherwise the
# tests fail saying what is missing.
if [ -z "${AMQP_URL:-}" ] && ! (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v rabbitmq-server >/dev/null 2>&1; then
    echo "starting RabbitMQ (rabbitmq-server -detached) for the backend tests"
    rabbitmq-server -detached || true
    for _ in $(seq 1 60); do (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null && break; sleep 1; done
  else
    echo "warning: no RabbitMQ on 127.0.0.1:5672 and AMQP_URL is not set: the backend tests will fail" >&2
    echo "         (apt-get install rabbitmq-server, or set AMQP_URL)" >&2
  fi
fi
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing missing system packages: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
  # The packages' own services are not ours to run; tests start private brokers
  # and a private Prometheus.
else
  echo "error: the tests need these Debian packages: ${need[*]}" >&2
  echo "       install them with: sudo apt-get install ${need[*]}" >&2
  exit 1
fi
