#!/bin/bash
# compare.sh -- coturn and vigi-turn side by side, same flags, same load, one machine, one run.
#
#   cargo build --release --bins
#   benches/compare.sh                                        # every vigi-bench profile, 1 run
#   PROFILES="fixed100 sweep1" RUNS=3 benches/compare.sh
#   TU_PROFILES="udp_chan udp_send" benches/compare.sh        # also coturn's own turnutils load
#   FASTPATH_PROFILES="chan send" PROFILES= benches/compare.sh  # whole-path CPU, XDP on and off,
#                                                             # in namespaces (fastpath-compare.sh)
#
# Both servers are started with coturn's flags (-n -L 127.0.0.1 -E 127.0.0.1 -p PORT --min-port
# --max-port --allow-loopback-peers --no-cli --no-tls --no-dtls --realm ... -m THREADS, and
# --lt-cred-mech --user or --use-auth-secret --static-auth-secret), loaded by vigi-bench (client)
# relaying to vigi-bench peer (echo). Runs are interleaved (coturn, vigi, coturn, vigi, ...) so
# both see the same machine noise.
#
# Safety: loopback only; every process runs under `timeout`; every load is bounded by a message
# count or a duration; no new run starts after MAX_TOTAL_S; only processes started here are
# stopped, by PID.
#
# Profiles (vigi-bench)
#   fixed100    CLIENTS clients x 1,000 msg/s, 100 B ChannelData, DURATION s      (UDP, long-term)
#   fixed1000   same, 1,000 B
#   send        same, 100 B Send/Data indications
#   tcp         same, 100 B ChannelData over TCP
#   rest        same, 100 B, TURN REST credentials
#   sweep1      each server with ONE relay thread: highest rate with < MAX_LOSS % loss (bisection)
#   allocflood  FLOOD_ALLOCS allocations as fast as SETUP_THREADS threads get them (REST auth)
#   hold        HOLD_ALLOCS allocations held; server RSS per allocation
#
# Environment (defaults in brackets)
#   PROFILES      [fixed100 fixed1000 send tcp rest sweep1 allocflood hold]
#   TU_PROFILES   profiles of ../shared/bench/compare-coturn.sh to run as well [none]
#   FASTPATH_PROFILES  profiles of benches/fastpath-compare.sh (chan send) to run as well: coturn
#                 4.17.1, vigi-turn and vigi-turn with the XDP fast path, whole-path CPU per
#                 relayed packet (root; COTURN417_BIN [/opt/coturn-4.17/bin/turnserver]) [none]
#   RUNS          runs per (server, profile) [1]
#   RETRIES       extra attempts when a run was disturbed by other users of the box [1]
#   OTHER_MAX     a run is clean if other processes used < this many cores on average [0.15]
#   THREADS       relay threads (-m) for all but sweep1 [2]
#   CLIENTS       [50]   DURATION [5]   PER_CLIENT_RATE msg/s [1000]
#   MAX_LOSS      % [1]  SWEEP_START msg/s [20000]  SWEEP_STEP s [2]  SWEEP_STEPS [8]  SWEEP_CLIENTS [20]
#   FLOOD_ALLOCS  [15000] HOLD_ALLOCS [10000]  SETUP_THREADS [16]
#   VIGI_EXTRA    flags appended to vigi-turn's command only (e.g. "--sock-buf-size 4194304");
#                 the flags are then no longer identical: say so when quoting the figures []
#   COTURN_BIN    [turnserver]  VIGI_BIN [target/release/vigi-turn]  BENCH_BIN [target/release/vigi-bench]
#   LPORT [38478]  PEER_PORT [38480]  RMIN RMAX relay range [10000 31999] (below the ephemeral range)
#   PIN           1: server on CPU 0, load on CPU 1 (taskset) [0]
#   NICE          nice value of this run's scheduler autogroup (root; 0 = off) [-10]
#   MAX_TOTAL_S   [1200]   OUT result directory [$TMPDIR/vigi-compare-<timestamp>]
#
# Output: RUN lines (one per run), SUMMARY lines (median over the clean runs, or over all runs
# if none was clean), RATIO lines (vigi/coturn).
#   relay_pps     packets/s relayed by the server (client->peer + peer->client) = 2 x echoes/s
#   loss%         (sent - echoed) / sent
#   rtt_p50_us rtt_p99_us   round trip client -> server -> peer -> server -> client
#   cpu_us/pkt    server CPU (utime+stime of its process tree, /proc/PID/stat) per relayed packet
#   rss_kb        server RSS after the load (VmRSS of its process tree)
#   alloc/s       allocflood: allocations per second (the client keeps --setup-window Allocates in flight per thread; it may still be the
#                 limit: cpu_us/alloc, server CPU per allocation, is the robust figure)
#   kb/alloc      hold: server RSS growth per held allocation
#   best_pps      sweep1: highest relayed packets/s with loss < MAX_LOSS
#   bench_cpu_s peer_cpu_s   CPU of the load client and the echo peer (same machine: they compete)
#   other_cpu_s   CPU used by everything else meanwhile (noise from other users of the box)
#   udp_buf_drops kernel UDP receive/send buffer overflows during the run (/proc/net/snmp),
#                 i.e. where loss happened: a socket that was not read fast enough
set -u
# On a shared machine the scheduler splits CPU between sessions (autogroups), whatever a
# process's own nice value: run in a new session and give that session's group a higher weight
# (root only; NICE=0 turns this off), as ../shared/bench/compare-coturn.sh does.
NICE=${NICE:--10}
if [ "$NICE" != 0 ] && [ "$(id -u)" = 0 ] && [ -z "${BENCH_AG:-}" ] && [ -e /proc/self/autogroup ]; then
  BENCH_AG=1 exec setsid --wait "$0" "$@"
fi
[ -n "${BENCH_AG:-}" ] && echo "$NICE" > /proc/self/autogroup 2>/dev/null
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
PROFILES=${PROFILES-"fixed100 fixed1000 send tcp rest sweep1 allocflood hold"}
TU_PROFILES=${TU_PROFILES:-}
FASTPATH_PROFILES=${FASTPATH_PROFILES:-}
RUNS=${RUNS:-1}
RETRIES=${RETRIES:-1}
OTHER_MAX=${OTHER_MAX:-0.15}
THREADS=${THREADS:-2}
CLIENTS=${CLIENTS:-50}
DURATION=${DURATION:-5}
PER_CLIENT_RATE=${PER_CLIENT_RATE:-1000}
MAX_LOSS=${MAX_LOSS:-1}
SWEEP_START=${SWEEP_START:-20000}
SWEEP_STEP=${SWEEP_STEP:-2}
SWEEP_STEPS=${SWEEP_STEPS:-8}
SWEEP_CLIENTS=${SWEEP_CLIENTS:-20}
FLOOD_ALLOCS=${FLOOD_ALLOCS:-15000}
HOLD_ALLOCS=${HOLD_ALLOCS:-10000}
SETUP_THREADS=${SETUP_THREADS:-16}
VIGI_EXTRA=${VIGI_EXTRA:-}
COTURN_BIN=${COTURN_BIN:-turnserver}
VIGI_BIN=${VIGI_BIN:-$REPO/target/release/vigi-turn}
BENCH_BIN=${BENCH_BIN:-$REPO/target/release/vigi-bench}
LPORT=${LPORT:-38478}
PEER_PORT=${PEER_PORT:-38480}
RMIN=${RMIN:-10000}
RMAX=${RMAX:-31999}
PIN=${PIN:-0}
MAX_TOTAL_S=${MAX_TOTAL_S:-1200}
OUT=${OUT:-${TMPDIR:-/tmp}/vigi-compare-$(date +%Y%m%d-%H%M%S)}
TUSER=bench; TPASS=benchpw; REALM=bench.local; SECRET=benchsecret
HZ=$(getconf CLK_TCK)
T_START=$(date +%s)

SRV_PFX=""; CLI_PFX=""
[ "$PIN" = 1 ] && { SRV_PFX="taskset -c 0"; CLI_PFX="taskset -c 1"; }

. "$HERE/lib.sh"  # descendants, tree_ticks, tree_rss_kb, stop_tree
port_busy() { ss -Haun "sport = :$1" 2>/dev/null | grep -q . || ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }
wait_listen() {
  local i
  for i in $(seq 1 100); do
    ss -Hlnu "sport = :$1" | grep -q . && ss -Hlnt "sport = :$1" | grep -q . && return 0
    sleep 0.1
  done
  return 1
}
busy_ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }
udp_drops() { awk '/^Udp:/{n++; if (n==1) for (i=1;i<=NF;i++) h[i]=$i; else for (i=1;i<=NF;i++) if (h[i]=="RcvbufErrors" || h[i]=="SndbufErrors") d+=$i} END{print d+0}' /proc/net/snmp; }
jget() { grep -o "\"$1\":[^,}]*" "$2" | head -1 | cut -d: -f2; }  # flat key of a one-line JSON

server_cmd() {  # label auth(lt|rest) threads rundir -> command
  local bin auth
  [ "$1" = coturn ] && bin=$COTURN_BIN || bin=$VIGI_BIN
  if [ "$2" = lt ]; then auth="--lt-cred-mech --user $TUSER:$TPASS"
  else auth="--use-auth-secret --static-auth-secret $SECRET"; fi
  [ "$1" = vigi ] && auth="$auth $VIGI_EXTRA"
  echo "$bin -n -L 127.0.0.1 -E 127.0.0.1 -p $LPORT --min-port $RMIN --max-port $RMAX --allow-loopback-peers --user-quota 0 --no-cli --no-tls --no-dtls --realm $REALM --pidfile $4/turnserver.pid --log-file $4/turnserver.log --simple-log --no-stdout-log -m $3 $auth"
}

profile_def() {  # -> "auth threads vigi-bench-args"
  local rate=$((CLIENTS * PER_CLIENT_RATE))
  local fixed="-m $CLIENTS -c --rate $rate --duration $DURATION"
  case "$1" in
    fixed100)   echo "lt $THREADS -l 100 $fixed" ;;
    fixed1000)  echo "lt $THREADS -l 1000 $fixed" ;;
    send)       echo "lt $THREADS -s -l 100 $fixed" ;;
    tcp)        echo "lt $THREADS -t -l 100 $fixed" ;;
    rest)       echo "rest $THREADS -l 100 $fixed" ;;
    sweep1)     echo "lt 1 -l 100 -m $SWEEP_CLIENTS -c --sweep --rate $SWEEP_START --sweep-step $SWEEP_STEP --sweep-steps $SWEEP_STEPS --max-loss $MAX_LOSS --linger 1" ;;
    allocflood) echo "rest $THREADS -m $FLOOD_ALLOCS -n 0 -c --setup-threads $SETUP_THREADS" ;;
    hold)       echo "rest $THREADS -m $HOLD_ALLOCS -n 0 -c --setup-threads $SETUP_THREADS --hold 4" ;;
    *) return 1 ;;
  esac
}

SRV_PID=""; PEER_PID=""
cleanup() { [ -n "$SRV_PID" ] && stop_tree $SRV_PID; [ -n "$PEER_PID" ] && stop_tree $PEER_PID; }
trap cleanup EXIT
trap 'exit 130' INT TERM

run_one() {  # label profile run#
  local L=$1 prof=$2 k=$3 def auth th args rundir cmd cargs s0 s1 rss0 rss1 rssh t0 t1 bpid i json extra
  def=$(profile_def "$prof") || { echo "unknown profile $prof" >&2; return 2; }
  auth=${def%% *}; def=${def#* }; th=${def%% *}; args=${def#* }
  rundir="$OUT/${L}_${prof}_r$k"; mkdir -p "$rundir"
  cmd=$(server_cmd "$L" "$auth" "$th" "$rundir"); echo "$cmd" > "$rundir/server_cmd.txt"
  $SRV_PFX timeout 600 bash -c "ulimit -n 65536 2>/dev/null; exec $cmd" > "$rundir/server.out" 2>&1 &
  SRV_PID=$!
  if ! wait_listen $LPORT; then echo "ERROR: $L did not listen on $LPORT (see $rundir)" >&2; stop_tree $SRV_PID; SRV_PID=""; return 2; fi
  sleep 0.3
  if [ "$auth" = rest ]; then cargs="-u $TUSER -W $SECRET"; else cargs="-u $TUSER -w $TPASS"; fi
  local p0 p1 b0 b1 d0 d1 bcpu
  rss0=$(tree_rss_kb $SRV_PID); s0=$(tree_ticks $SRV_PID); p0=$(tree_ticks $PEER_PID); b0=$(busy_ticks); d0=$(udp_drops); t0=$(date +%s.%N)
  $CLI_PFX /usr/bin/time -f "BENCH_CPU %U %S" -o "$rundir/bench.time" timeout 300 "$BENCH_BIN" -p $LPORT -e 127.0.0.1 -r $PEER_PORT $cargs $args --json 127.0.0.1 \
    > "$rundir/bench.json" 2> "$rundir/bench.err" &
  bpid=$!
  rssh=0
  if [ "$prof" = hold ]; then  # RSS while the allocations are held
    for i in $(seq 1 600); do grep -q "holding allocations" "$rundir/bench.err" && break; kill -0 $bpid 2>/dev/null || break; sleep 0.1; done
    sleep 1; rssh=$(tree_rss_kb $SRV_PID)
  fi
  wait $bpid
  t1=$(date +%s.%N); s1=$(tree_ticks $SRV_PID); p1=$(tree_ticks $PEER_PID); b1=$(busy_ticks); d1=$(udp_drops); rss1=$(tree_rss_kb $SRV_PID)
  bcpu=$(awk '/BENCH_CPU/{print $2+$3}' "$rundir/bench.time" 2>/dev/null); bcpu=${bcpu:-0}
  stop_tree $SRV_PID; SRV_PID=""
  json="$rundir/bench.json"
  [ -s "$json" ] || { echo "ERROR: no result for $L $prof (see $rundir/bench.err)" >&2; return 1; }
  local sent recv relay loss p50 p99 aps fails best
  sent=$(jget sent "$json"); recv=$(jget received "$json"); relay=$(jget relay_pps "$json")
  loss=$(jget loss_pct "$json"); p50=$(jget rtt_p50_us "$json"); p99=$(jget rtt_p99_us "$json")
  aps=$(jget allocations_per_s "$json"); fails=$(jget setup_failures "$json"); best=$(jget offered_rate "$json")
  extra=""
  case "$prof" in
    allocflood) extra=$(awk -v a=$aps -v f=$fails -v n=$FLOOD_ALLOCS -v s=$((s1 - s0)) -v hz=$HZ \
                  'BEGIN{printf "alloc/s=%.0f cpu_us/alloc=%.1f setup_failures=%d", a, s/hz*1e6/(n-f>0?n-f:1), f}') ;;
    hold) extra=$(awk -v a=$rssh -v b=$rss0 -v n=$HOLD_ALLOCS -v f=$fails 'BEGIN{printf "rss_held_kb=%d kb/alloc=%.2f setup_failures=%d", a, (a-b)/(n-f>0?n-f:1), f}') ;;
    sweep1) extra=$(awk -v b=$best 'BEGIN{printf "best_pps=%.0f", 2*b}')
            sent=0; recv=0 ;;  # the JSON holds the best step only: no per-packet CPU figure
  esac
  awk -v L=$L -v prof=$prof -v k=$k -v sent=$sent -v recv=$recv -v relay=$relay -v loss=$loss \
      -v p50=$p50 -v p99=$p99 -v s=$((s1 - s0)) -v hz=$HZ -v wall=$(echo "$t1 - $t0" | bc) \
      -v rss0=$rss0 -v rss1=$rss1 -v extra="$extra" -v p=$((p1 - p0)) -v busy=$((b1 - b0)) -v bcpu=$bcpu \
      -v drops=$((d1 - d0)) -v omax=$OTHER_MAX 'BEGIN{
      cpu=s/hz; cpp=(sent+recv>0)? cpu/(sent+recv)*1e6 : 0; peer=p/hz
      other=busy/hz - cpu - peer - bcpu; if (other < 0) other=0
      clean=(other/(wall > 2 ? wall : 2) < omax) ? 1 : 0  # short runs: our own ps/awk count as other
      printf "RUN server=%s profile=%s run=%d clean=%d relay_pps=%.0f loss%%=%.3f rtt_p50_us=%d rtt_p99_us=%d srv_cpu_s=%.2f cpu_us/pkt=%.2f rss_kb=%d idle_rss_kb=%d bench_cpu_s=%.2f peer_cpu_s=%.2f other_cpu_s=%.2f udp_buf_drops=%d wall_s=%.1f sent=%d recv=%d %s\n",
        L, prof, k, clean, relay, loss, p50, p99, cpu, cpp, rss1, rss0, bcpu, peer, other, drops, wall, sent, recv, extra
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
     n[key]++; for (i=2;i<=NF;i++) { split($i,a,"="); f=a[1]; if (f=="server" || f=="profile" || f=="run" || f=="clean") continue
       vals[key,f,n[key]]=v[f]; fields[key,f]=1; if (!((v["profile"],f) in fo)) { fo[v["profile"],f]=1; forder[v["profile"]]=forder[v["profile"]] " " f } } }
   function med(key,f,   m,i,j,t,x) { m=n[key]; for(i=1;i<=m;i++) x[i]=vals[key,f,i]+0
       for(i=1;i<=m;i++) for(j=i+1;j<=m;j++) if (x[j]<x[i]) {t=x[i];x[i]=x[j];x[j]=t}
       if (m%2) return x[(m+1)/2]; return (x[m/2]+x[m/2+1])/2 }
   END {
     for (o=1;o<=no;o++) { key=order[o]; split(key,kk," "); nf=split(forder[kk[2]],F," "); line="SUMMARY server=" kk[1] " profile=" kk[2] " runs=" n[key] ((key in anyclean) ? "(clean)" : "(ALL-NOISY)")
       for (j=1;j<=nf;j++) { M[key,F[j]]=med(key,F[j]); line=line sprintf(" %s=%g", F[j], M[key,F[j]]) } print line }
     split("relay_pps loss% rtt_p50_us rtt_p99_us cpu_us/pkt rss_kb alloc/s cpu_us/alloc kb/alloc best_pps", R, " ")
     for (o=1;o<=no;o++) { key=order[o]; split(key,kk," "); if (kk[1]!="vigi") continue; ref="coturn " kk[2]; if (!(ref in n)) continue
       line="RATIO vigi/coturn profile=" kk[2]
       for (j=1;j<=10;j++) { f=R[j]; if (!((key,f) in fields)) continue
         if (f=="loss%") { line=line sprintf(" loss%%=%.3f/%.3f", M[key,f], M[ref,f]); continue }
         line=line sprintf(" %s=%s", f, (M[ref,f]>0 ? sprintf("%.3f", M[key,f]/M[ref,f]) : "n/a")) }
       print line }
   }' "$OUT/runs.txt" "$OUT/runs.txt"
}

main() {
  local prof k L att rc
  mkdir -p "$OUT"; : > "$OUT/runs.txt"
  if [ -z "$PROFILES" ]; then  # only the other scripts' profiles
    run_others; return
  fi
  for b in "$COTURN_BIN" "$VIGI_BIN" "$BENCH_BIN"; do command -v "$b" >/dev/null || { echo "missing $b (cargo build --release --bins; apt-get install coturn)" >&2; exit 2; }; done
  for p in $LPORT $PEER_PORT; do port_busy $p && { echo "ERROR: port $p in use; set LPORT/PEER_PORT" >&2; exit 2; }; done
  for prof in $PROFILES; do profile_def $prof >/dev/null || { echo "unknown profile $prof" >&2; exit 2; }; done
  echo "# $(date -Is) host=$(hostname) cpus=$(nproc) kernel=$(uname -r) out=$OUT"
  echo "# coturn: $(server_cmd coturn lt $THREADS RUNDIR)"
  echo "# vigi:   $(server_cmd vigi lt $THREADS RUNDIR)"
  echo "# PROFILES=$PROFILES RUNS=$RUNS THREADS=$THREADS CLIENTS=$CLIENTS DURATION=$DURATION PER_CLIENT_RATE=$PER_CLIENT_RATE PIN=$PIN"
  $CLI_PFX timeout $((MAX_TOTAL_S + 600)) "$BENCH_BIN" peer -L 127.0.0.1 -p $PEER_PORT --threads 2 > "$OUT/peer.log" 2>&1 &
  PEER_PID=$!
  sleep 0.3
  for k in $(seq 1 $RUNS); do
    for prof in $PROFILES; do
      for L in coturn vigi; do
        if [ $(( $(date +%s) - T_START )) -gt $MAX_TOTAL_S ]; then echo "# MAX_TOTAL_S reached, stopping"; break 3; fi
        for att in $(seq 0 $RETRIES); do
          run_one $L $prof $k; rc=$?
          [ $rc = 0 ] || [ $rc = 2 ] && break
          [ $att -lt $RETRIES ] && echo "# run disturbed by other processes (other_cpu_s), trying again"
        done
      done
    done
  done
  stop_tree $PEER_PID; PEER_PID=""
  summarize | tee "$OUT/summary.txt"
  run_others
}

run_others() {
  if [ -n "$FASTPATH_PROFILES" ]; then
    echo "# whole-path profiles via $HERE/fastpath-compare.sh"
    PROFILES="$FASTPATH_PROFILES" RUNS=$RUNS THREADS=$THREADS VIGI_BIN=$VIGI_BIN \
      COTURN_BIN=${COTURN417_BIN:-/opt/coturn-4.17/bin/turnserver} OUT="$OUT/fastpath" \
      MAX_TOTAL_S=$MAX_TOTAL_S "$HERE/fastpath-compare.sh"
  fi
  if [ -n "$TU_PROFILES" ]; then
    local cc=${COMPARE_COTURN:-$REPO/../shared/bench/compare-coturn.sh}
    [ -x "$cc" ] || cc="bash $cc"
    echo "# turnutils profiles via $cc"
    SERVERS="coturn vigi" SERVER_BIN_coturn=$COTURN_BIN SERVER_BIN_vigi=$VIGI_BIN PROFILES="$TU_PROFILES" \
      RUNS=$RUNS THREADS_LIST=$THREADS OUT="$OUT/turnutils" MAX_TOTAL_S=$MAX_TOTAL_S $cc
  fi
}
main "$@"
