#!/usr/bin/env bash
# Runs a benchmark on a fresh machine: installs what it needs (wrk from Debian's packages), then
# `cargo bench --bench NAME`. Usage: benches/run.sh validate|ingress|delivery|pipeline|completion|sidecar_restart|runtime|sidecar_delivery|external|slack|slack_delivery|telegram|queue [ENV=VALUE ...]
set -euo pipefail
cd "$(dirname "$0")/.."
name="${1:?usage: benches/run.sh validate|ingress|delivery|pipeline|completion|sidecar_restart|runtime|sidecar_delivery|external|slack|slack_delivery|telegram|queue}"
shift
if { [ "$name" = ingress ] || [ "$name" = delivery ] || [ "$name" = pipeline ] || [ "$name" = sidecar_delivery ] || [ "$name" = external ] || [ "$name" = slack ] || [ "$name" = slack_delivery ] || [ "$name" = telegram ]; } && ! command -v wrk >/dev/null 2>&1; then
  echo "installing wrk (Debian package) ..." >&2
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq wrk; else sudo apt-get update -qq && sudo apt-get install -y -qq wrk; fi
fi
env "$@" cargo bench --bench "$name"
