#!/usr/bin/env bash
# Docker HEALTHCHECK: one STUN Binding request to the listener the server itself reported in
# $VIGI_TURN_HEALTH_FILE (`udp|tcp|tls IP PORT`, written once every socket is bound), so it
# follows --listening-port, -L and --no-udp. Without that file: UDP to
# 127.0.0.1:$VIGI_TURN_HEALTH_PORT (default 3478). Healthy when a Binding success answer comes
# back within 2 seconds (for a TLS-only server: when the TLS port accepts a connection).
# bash only: the runtime image has no STUN client.
set -u
kind=udp ip=127.0.0.1 port="${VIGI_TURN_HEALTH_PORT:-3478}"
if [ -n "${VIGI_TURN_HEALTH_FILE:-}" ] && [ -r "$VIGI_TURN_HEALTH_FILE" ]; then
  read -r kind ip port < "$VIGI_TURN_HEALTH_FILE" || exit 1
fi
case "$kind" in
  udp | tcp) exec 3<>"/dev/$kind/$ip/$port" || exit 1 ;;
  tls) exec 3<>"/dev/tcp/$ip/$port" || exit 1; exit 0 ;;
  *) exit 1 ;;
esac
# Binding request: type 0x0001, length 0, magic cookie, a 12-byte transaction id. Over TCP the
# same bytes are the whole frame (RFC 8489 §6.2.2).
printf '\x00\x01\x00\x00\x21\x12\xa4\x42vigihealth00' >&3
# A Binding success response starts with 0x01 0x01.
IFS= read -r -t 2 -N 1 -u 3 first || exit 1
[ "$first" = $'\x01' ]
