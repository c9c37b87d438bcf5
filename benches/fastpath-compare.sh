#!/bin/bash
# fastpath-compare.sh -- whole-path CPU per relayed packet: coturn 4.17.1, vigi-turn, and vigi-turn
# with the kernel fast path (XDP), under coturn's own turnutils load, in network namespaces.
#
#   cargo build --release --bins
#   ../shared/bench/build-coturn.sh GITDIR            # coturn 4.17.1 into /opt/coturn-4.17/bin
#   benches/fastpath-compare.sh                       # every server, both profiles, 3 runs
#   RUNS=1 PROFILES=chan SERVERS="coturn vigi-xdp" benches/fastpath-compare.sh
#   (benches/compare.sh runs it too when given FASTPATH_PROFILES="chan send")
#
# Why namespaces, and what is measured. XDP work is done in softirq context and charged to
# whichever task is current on that CPU (the sender, usually) or to ksoftirqd, not to the server:
# the server's own CPU would flatter the fast path. So the figure that matters is the whole
# path: server + turnutils_peer + turnutils_uclient + ksoftirqd, per relayed packet (each message
# relayed client -> peer and each echo relayed peer -> client counts once). The server's own CPU
# per relayed packet is printed too.
#
# Topology, created here and removed on exit: two namespaces joined by one veth pair.
#   vfc-srv-PID   10.119.0.1/24 on vfs   the TURN server (XDP on vfs for vigi-xdp)
#   vfc-load-PID  10.119.0.2/24 on vfl   turnutils_uclient and turnutils_peer
# Both ends have transmit checksum offload off (a veth sender otherwise leaves partial checksums,
# which the fast path passes up). With XDP_MODE=native only: a veth delivers frames its far end
# sends with XDP_TX only if its own NAPI is on, which an XDP program turns on, so vfl then gets a
# pass-everything program, compiled here with clang (6 lines of C, below). In generic mode (what
# `--xdp-mode auto` picks on a veth) the program's frames leave through vfs like any other and
# vfl needs none. The same topology and flags serve every server of a run.
# XDP is attached only to vfs, inside the namespace; nothing touches this machine's interfaces.
#
# Safety: every process runs under `timeout`; each load is a fixed number of messages; no new run
# starts after MAX_TOTAL_S; only processes started here are stopped, by PID; the namespaces go
# with the script.
#
# Environment (defaults in brackets)
#   SERVERS       from: coturn vigi vigi-xdp [coturn vigi vigi-xdp]
#   PROFILES      chan (100 B ChannelData), send (100 B Send/Data indications) [chan send]
#   RUNS          runs per (server, profile), interleaved [3]
#   CLIENTS MSGS INTERVAL_MS   uclient -m -n -z [50 10000 1]: 50 clients x 1,000 msg/s, 10 s
#   THREADS       relay threads (-m) of both servers [2]
#   XDP_MODE      auto | native | generic [auto: generic on this veth, see docs/fast-path.md]
#   COTURN_BIN    [/opt/coturn-4.17/bin/turnserver]
#   TU_BIN_DIR    where turnutils_uclient and turnutils_peer are [/usr/bin: Debian's coturn package;
#                 4.17.1's own uclient stalls before sending with -s here]
#   COTURN_EXTRA  flags for coturn only [--rfc5766-channel-numbers: 4.17 answers channels above
#                 0x4FFF with 400 (RFC 9443), and Debian's 4.6.1 uclient picks them up to 0x7FFF]
#   VIGI_BIN      [target/release/vigi-turn]
#   OTHER_MAX     a run is clean if processes outside this script used < this many cores [0.15]
#   MAX_TOTAL_S   [1500]   RUN_TIMEOUT_S [120]   OUT [$TMPDIR/vigi-fastpath-<timestamp>]
#
# Output: RUN lines, SUMMARY lines (medians over clean runs, or over all if none was clean), and
# RATIO lines against coturn:
#   whole_us/pkt   (server + peer + uclient + ksoftirqd CPU) / relayed packets
#   srv_us/pkt     server CPU / relayed packets
#   kernel%        vigi-xdp: share of relayed packets the XDP program relayed
#                  (vigi_turn_fastpath_packets_total over sent + received)
set -u
NICE=${NICE:--10}
if [ "$NICE" != 0 ] && [ "$(id -u)" = 0 ] && [ -z "${BENCH_AG:-}" ] && [ -e /proc/self/autogroup ]; then
  BENCH_AG=1 exec setsid --wait "$0" "$@"
fi
[ -n "${BENCH_AG:-}" ] && echo "$NICE" > /proc/self/autogroup 2>/dev/null
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
SERVERS=${SERVERS:-"coturn vigi vigi-xdp"}
PROFILES=${PROFILES:-"chan send"}
RUNS=${RUNS:-3}
CLIENTS=${CLIENTS:-50}
MSGS=${MSGS:-10000}
INTERVAL_MS=${INTERVAL_MS:-1}
THREADS=${THREADS:-2}
XDP_MODE=${XDP_MODE:-auto}
COTURN_BIN=${COTURN_BIN:-/opt/coturn-4.17/bin/turnserver}
TU_BIN_DIR=${TU_BIN_DIR:-/usr/bin}
COTURN_EXTRA=${COTURN_EXTRA---rfc5766-channel-numbers}
VIGI_BIN=${VIGI_BIN:-$REPO/target/release/vigi-turn}
OTHER_MAX=${OTHER_MAX:-0.15}
MAX_TOTAL_S=${MAX_TOTAL_S:-1500}
RUN_TIMEOUT_S=${RUN_TIMEOUT_S:-120}
OUT=${OUT:-${TMPDIR:-/tmp}/vigi-fastpath-$(date +%Y%m%d-%H%M%S)}
HZ=$(getconf CLK_TCK)
T_START=$(date +%s)
NS_SRV=vfc-srv-$$; NS_LOAD=vfc-load-$$
SRV_IP=10.119.0.1; LOAD_IP=10.119.0.2
LPORT=3478; PEER_PORT=3480; METRICS_PORT=9641
RMIN=49152; RMAX=65535
TUSER=bench; TPASS=benchpw; REALM=bench.local

. "$HERE/lib.sh"  # descendants, tree_ticks, stop_tree
ksoftirqd_ticks() { local s=0 p t; for p in $(pgrep -x 'ksoftirqd/[0-9]+'); do t=$(awk '{print $14+$15}' /proc/$p/stat 2>/dev/null) && s=$((s + ${t:-0})); done; echo $s; }
# CPU of processes outside this script's session (noise from other users of the machine).
proc_snap() { cat /proc/[0-9]*/stat 2>/dev/null | awk '{ i=0; s=$0; while ((j=index(substr(s,i+1),")"))>0) i+=j
     split(substr(s,i+2), f, " "); print $1, f[4], f[12]+f[13]+f[14]+f[15] }'; }
foreign_ticks() {  # snapA snapB my_session_id (ksoftirqd is ours: it carries the relayed packets)
  local ks; ks=" $(pgrep -x 'ksoftirqd/[0-9]+' | tr '\n' ' ')"
  awk -v sid=$3 -v ks="$ks" 'NR==FNR { a[$1]=$3; as[$1]=$2; next }
     { seen[$1]=1; if ($2!=sid && index(ks, " " $1 " ")==0) d += $3 - (($1 in a) ? a[$1] : 0) }
     END { for (p in a) if (!(p in seen) && as[p]!=sid) d -= a[p]; print d+0 }' "$1" "$2"; }
MYSID=$(ps -o sid= -p $$ | tr -d ' ')
in_srv() { ip netns exec "$NS_SRV" "$@"; }
in_load() { ip netns exec "$NS_LOAD" "$@"; }
wait_listen() {  # port: UDP and TCP listeners in the server namespace
  local i
  for i in $(seq 1 100); do
    in_srv ss -Hlnu "sport = :$1" | grep -q . && in_srv ss -Hlnt "sport = :$1" | grep -q . && return 0
    sleep 0.1
  done
  return 1
}

SRV_PID=""; PEER_PID=""
cleanup() {
  [ -n "$SRV_PID" ] && stop_tree $SRV_PID 50; [ -n "$PEER_PID" ] && stop_tree $PEER_PID 50
  ip netns del "$NS_SRV" 2>/dev/null; ip netns del "$NS_LOAD" 2>/dev/null
}
trap cleanup EXIT
trap 'exit 130' INT TERM

setup_netns() {
  ip netns add "$NS_SRV" && ip netns add "$NS_LOAD" || return 1
  in_srv ip link add vfs type veth peer name vfl netns "$NS_LOAD" || return 1
  in_srv ip addr add $SRV_IP/24 dev vfs; in_load ip addr add $LOAD_IP/24 dev vfl
  in_srv ip link set lo up; in_load ip link set lo up
  in_srv ip link set vfs up; in_load ip link set vfl up
  in_srv ethtool -K vfs tx off >/dev/null; in_load ethtool -K vfl tx off >/dev/null
  # bpf_fib_lookup answers only for interfaces that forward (the server's namespace only).
  in_srv sysctl -qw net.ipv4.conf.all.forwarding=1
  in_load ip route get $SRV_IP >/dev/null || { echo "ERROR: no route between the namespaces" >&2; return 1; }
  [ "$XDP_MODE" = native ] || return 0
  cat > "$OUT/xdp_pass.c" <<'EOC'
#include <linux/bpf.h>
__attribute__((section("xdp"), used)) int xdp_pass(struct xdp_md *ctx) { return XDP_PASS; }
char LICENSE[] __attribute__((section("license"), used)) = "GPL";
EOC
  clang -O2 -target bpf -c "$OUT/xdp_pass.c" -o "$OUT/xdp_pass.o" || { echo "ERROR: clang could not build the pass program" >&2; return 1; }
  in_load ip link set dev vfl xdpdrv obj "$OUT/xdp_pass.o" sec xdp || { echo "ERROR: cannot attach the pass program to vfl" >&2; return 1; }
}

server_cmd() {  # label rundir
  local bin=$VIGI_BIN extra=""
  [ "$1" = coturn ] && { bin=$COTURN_BIN; extra=$COTURN_EXTRA; }
  [ "$1" = vigi-xdp ] && extra="--xdp-interface vfs --xdp-mode $XDP_MODE"
  # --allowed-peer-ip: the peer sits on a private address, which vigi-turn refuses by default;
  # --user-quota 0: one user stands for all of uclient's clients (vigi-turn has a quota by default).
  echo "$bin -n -L $SRV_IP -E $SRV_IP -p $LPORT --min-port $RMIN --max-port $RMAX --allowed-peer-ip $LOAD_IP --user-quota 0 --no-cli --no-tls --no-dtls --realm $REALM --lt-cred-mech --user $TUSER:$TPASS --pidfile $2/turnserver.pid --log-file $2/turnserver.log --simple-log --no-stdout-log --prometheus --prometheus-port $METRICS_PORT -m $THREADS $extra"
}

profile_flags() {
  case "$1" in
    chan) echo "-l 100 -m $CLIENTS -c -n $MSGS -z $INTERVAL_MS" ;;
    send) echo "-s -l 100 -m $CLIENTS -c -n $MSGS -z $INTERVAL_MS" ;;
    *) return 1 ;;
  esac
}

uclient_totals() {  # uclient output -> "sent recv loss"
  awk '/tot_send_msgs=/ { for (i=1;i<=NF;i++) { if ($i ~ /^tot_send_msgs=/) {split($i,a,"="); s=a[2]+0}
                                              if ($i ~ /^tot_recv_msgs=/) {split($i,a,"="); r=a[2]+0} } }
       /Total lost packets/ { gsub(/[(%),]/," "); l=$7 }
       END { printf "%d %d %s\n", s, r, (l=="" ? 100 : l) }' "$1"
}

fastpath_packets() {  # sum of vigi_turn_fastpath_packets_total, or 0
  in_srv curl -s --max-time 3 "http://$SRV_IP:$METRICS_PORT/metrics" 2>/dev/null \
    | awk '/^vigi_turn_fastpath_packets_total/ { s += $NF } END { print s+0 }'
}

run_one() {  # label profile run#
  local L=$1 prof=$2 k=$3 rundir cmd flags
  flags=$(profile_flags "$prof")
  rundir="$OUT/${L}_${prof}_r$k"; mkdir -p "$rundir"
  cmd=$(server_cmd "$L" "$rundir"); echo "$cmd" > "$rundir/server_cmd.txt"
  in_srv timeout $((RUN_TIMEOUT_S + 60)) bash -c "ulimit -n 65536 2>/dev/null; exec $cmd" > "$rundir/server.out" 2>&1 &
  SRV_PID=$!
  if ! wait_listen $LPORT; then echo "ERROR: $L did not listen (see $rundir)" >&2; stop_tree $SRV_PID 50; SRV_PID=""; return 2; fi
  sleep 0.5
  local s0 s1 p0 p1 k0 k1 t0 t1 ucpu urc fo fp0 fp1 sent recv loss
  fp0=0; [ "$L" = vigi-xdp ] && fp0=$(fastpath_packets)
  proc_snap > "$rundir/procs0"
  s0=$(tree_ticks $SRV_PID); p0=$(tree_ticks $PEER_PID); k0=$(ksoftirqd_ticks); t0=$(date +%s.%N)
  in_load /usr/bin/time -f "UCLIENT_CPU %U %S" -o "$rundir/uclient.time" \
    timeout $RUN_TIMEOUT_S "$TU_BIN_DIR/turnutils_uclient" -p $LPORT -e $LOAD_IP -r $PEER_PORT \
    -u $TUSER -w $TPASS $flags $SRV_IP > "$rundir/uclient.out" 2>&1
  urc=$?
  t1=$(date +%s.%N); s1=$(tree_ticks $SRV_PID); p1=$(tree_ticks $PEER_PID); k1=$(ksoftirqd_ticks)
  proc_snap > "$rundir/procs1"; fo=$(foreign_ticks "$rundir/procs0" "$rundir/procs1" $MYSID); rm -f "$rundir/procs0" "$rundir/procs1"
  fp1=0; [ "$L" = vigi-xdp ] && fp1=$(fastpath_packets)
  stop_tree $SRV_PID 50; SRV_PID=""
  ucpu=$(awk '/UCLIENT_CPU/{print $2+$3}' "$rundir/uclient.time" 2>/dev/null); ucpu=${ucpu:-0}
  read -r sent recv loss < <(uclient_totals "$rundir/uclient.out")
  awk -v L=$L -v prof=$prof -v k=$k -v urc=$urc -v sent=$sent -v recv=$recv -v loss=$loss \
      -v s=$((s1 - s0)) -v p=$((p1 - p0)) -v ks=$((k1 - k0)) -v u=$ucpu -v fo=$fo -v hz=$HZ \
      -v wall=$(echo "$t1 - $t0" | bc) -v fp=$((fp1 - fp0)) -v xdp=$([ "$L" = vigi-xdp ] && echo 1 || echo 0) \
      -v omax=$OTHER_MAX 'BEGIN{
      srv=s/hz; peer=p/hz; ksi=ks/hz; other=fo/hz; pk=sent+recv
      whole=srv+peer+u+ksi
      clean=(other/wall < omax && urc==0 && pk>0) ? 1 : 0
      printf "RUN server=%s profile=%s run=%d clean=%d whole_us/pkt=%.3f srv_us/pkt=%.3f loss%%=%s relay_pps=%.0f srv_cpu_s=%.2f peer_cpu_s=%.2f uclient_cpu_s=%.2f ksoftirqd_cpu_s=%.2f other_cpu_s=%.2f wall_s=%.1f sent=%d recv=%d kernel%%=%s rc=%d\n",
        L, prof, k, clean, (pk>0 ? whole/pk*1e6 : 0), (pk>0 ? srv/pk*1e6 : 0), loss, pk/wall, srv, peer, u, ksi, other, wall, sent, recv,
        (xdp ? sprintf("%.1f", (pk>0 ? 100*fp/pk : 0)) : "-"), urc
      exit(clean ? 0 : 1) }' | tee -a "$OUT/runs.txt"
  return ${PIPESTATUS[0]}
}

summarize() {
  awk '
   NR==FNR && /^RUN / { delete v; for (i=2;i<=NF;i++) { split($i,a,"="); v[a[1]]=a[2] }
     if (v["clean"]==1) anyclean[v["server"] " " v["profile"]]=1; next }
   /^RUN /{ delete v; for (i=2;i<=NF;i++) { split($i,a,"="); v[a[1]]=a[2] }
     key=v["server"] " " v["profile"]; if ((key in anyclean) && v["clean"]!=1) next
     if (!(key in seen)) { seen[key]=1; order[++no]=key }
     n[key]++; for (f in v) vals[key,f,n[key]]=v[f] }
   function med(key,f,   m,i,j,t,x) { m=n[key]; for(i=1;i<=m;i++) x[i]=vals[key,f,i]+0
       for(i=1;i<=m;i++) for(j=i+1;j<=m;j++) if (x[j]<x[i]) {t=x[i];x[i]=x[j];x[j]=t}
       LO=x[1]; HI=x[m]; if (m%2) return x[(m+1)/2]; return (x[m/2]+x[m/2+1])/2 }
   END {
     split("whole_us/pkt srv_us/pkt loss% relay_pps peer_cpu_s uclient_cpu_s ksoftirqd_cpu_s kernel%", F, " ")
     for (o=1;o<=no;o++) { key=order[o]; split(key,kk," ")
       line=sprintf("SUMMARY server=%s profile=%s runs=%d(%s)", kk[1], kk[2], n[key], (key in anyclean) ? "clean" : "ALL-NOISY")
       for (j=1;j<=8;j++) { m=med(key,F[j]); M[key,F[j]]=m; line=line sprintf(" %s=%g[%g..%g]", F[j], m, LO, HI) }
       print line }
     for (o=1;o<=no;o++) { key=order[o]; split(key,kk," "); if (kk[1]=="coturn") continue
       ref="coturn " kk[2]; if (!((ref,"whole_us/pkt") in M)) continue
       printf "RATIO server=%s/coturn-4.17.1 profile=%s whole_cpu_per_pkt=%.3f server_cpu_per_pkt=%.3f loss%%=%s/%s\n", kk[1], kk[2],
         (M[ref,"whole_us/pkt"]>0 ? M[key,"whole_us/pkt"]/M[ref,"whole_us/pkt"] : 0),
         (M[ref,"srv_us/pkt"]>0 ? M[key,"srv_us/pkt"]/M[ref,"srv_us/pkt"] : 0), M[key,"loss%"], M[ref,"loss%"] }
   }' "$OUT/runs.txt" "$OUT/runs.txt"
}

main() {
  local k prof L rc
  [ "$(id -u)" = 0 ] || { echo "fastpath-compare.sh: needs root (network namespaces, XDP)" >&2; exit 2; }
  for b in "$COTURN_BIN" "$VIGI_BIN" "$TU_BIN_DIR/turnutils_uclient" "$TU_BIN_DIR/turnutils_peer"; do
    [ -x "$b" ] || { echo "fastpath-compare.sh: missing $b (cargo build --release --bins; ../shared/bench/build-coturn.sh)" >&2; exit 2; }
  done
  for prof in $PROFILES; do profile_flags $prof >/dev/null || { echo "unknown profile $prof" >&2; exit 2; }; done
  mkdir -p "$OUT"; : > "$OUT/runs.txt"
  setup_netns || exit 2
  echo "# $(date -Is) cpus=$(nproc) kernel=$(uname -r) out=$OUT coturn=$("$COTURN_BIN" --version 2>&1 | tail -1) turnutils=$TU_BIN_DIR"
  for L in $SERVERS; do echo "# $L: $(server_cmd $L RUNDIR)"; done
  echo "# PROFILES=$PROFILES RUNS=$RUNS CLIENTS=$CLIENTS MSGS=$MSGS INTERVAL_MS=$INTERVAL_MS THREADS=$THREADS XDP_MODE=$XDP_MODE"
  in_load timeout $((MAX_TOTAL_S + 900)) "$TU_BIN_DIR/turnutils_peer" -L $LOAD_IP -p $PEER_PORT > "$OUT/peer.log" 2>&1 &
  PEER_PID=$!
  sleep 0.5
  for k in $(seq 1 $RUNS); do
    for prof in $PROFILES; do
      for L in $SERVERS; do
        for att in 0 1; do
          if [ $(( $(date +%s) - T_START )) -gt $MAX_TOTAL_S ]; then echo "# MAX_TOTAL_S reached, stopping"; break 4; fi
          run_one $L $prof $k; rc=$?
          [ $rc = 0 ] || [ $rc = 2 ] && break
          [ $att = 0 ] && echo "# run disturbed (other_cpu_s or uclient failed), trying again"
        done
      done
    done
  done
  stop_tree $PEER_PID 50; PEER_PID=""
  summarize | tee "$OUT/summary.txt"
}
main "$@"
