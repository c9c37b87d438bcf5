#!/usr/bin/env bash
# Docker entrypoint of the vigi-turn image, argument-compatible with coturn's image:
#
#   docker run vigi-turn --listening-port=3478 ...        arguments starting with `-` go to the server
#   docker run vigi-turn turnserver --listening-port=...   `turnserver` (coturn's name) is the server too
#   docker run vigi-turn bash                              anything else runs as given
#
# In the server's arguments, `$(...)` forms are expanded, as coturn's image does, so
# `--external-ip=$(detect-external-ip)` works; an option left empty by the expansion
# (`--external-ip=` when offline) is dropped with a warning. When no config file is named
# (-c, --conf-file) or refused (-n), /etc/coturn/turnserver.conf is read if it is mounted.
#
# Environment (for tests and unusual images):
#   VIGI_TURN_BIN    the server binary (default: vigi-turn)
#   VIGI_TURN_CONF   the config file read when mounted (default: /etc/coturn/turnserver.conf)
set -euo pipefail

server="${VIGI_TURN_BIN:-vigi-turn}"
conf="${VIGI_TURN_CONF:-/etc/coturn/turnserver.conf}"

if [ $# -eq 0 ] || [ "${1:0:1}" = '-' ]; then
  :
elif [ "$1" = turnserver ] || [ "$1" = vigi-turn ]; then
  shift
else
  exec "$@"
fi

args=()
has_conf=0
for arg in "$@"; do
  if [[ "$arg" == *'$('* ]]; then
    # The operator's own command line, expanded as a shell would; quoting keeps it one argument.
    arg="$(eval "printf '%s' \"$arg\"")"
    if [[ "$arg" =~ ^--?[A-Za-z0-9-]+=$ ]]; then
      echo "docker-entrypoint: ${arg%=}: empty after expansion; option dropped" >&2
      continue
    fi
  fi
  case "$arg" in
    -c | -c* | --conf-file | --conf-file=* | -n) has_conf=1 ;;
  esac
  args+=("$arg")
done

if [ "$has_conf" = 0 ] && [ -f "$conf" ]; then
  args=(-c "$conf" "${args[@]}")
fi

exec "$server" "${args[@]}"
