#!/usr/bin/env bash
# Docker HEALTHCHECK: one STUN Binding request over UDP to 127.0.0.1:$VIGI_TURN_HEALTH_PORT
# (default 3478); healthy when any answer comes back within 2 seconds. bash only: the runtime
# image has no STUN client.
set -u
port="${VIGI_TURN_HEALTH_PORT:-3478}"
exec 3<>"/dev/udp/127.0.0.1/$port" || exit 1
# Binding request: type 0x0001, length 0, magic cookie, a 12-byte transaction id.
printf '\x00\x01\x00\x00\x21\x12\xa4\x42vigihealth00' >&3
# A Binding success response starts with 0x01 0x01.
IFS= read -r -t 2 -N 1 -u 3 first || exit 1
[ "$first" = $'\x01' ]
