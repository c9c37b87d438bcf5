# lib.sh -- process bookkeeping shared by compare.sh and fastpath-compare.sh (sourced, not run):
# a process tree's members, its CPU ticks and RSS, and stopping a tree these scripts started.

descendants() { local p=$1 c; echo "$p"; for c in $(ps -o pid= --ppid "$p" 2>/dev/null); do descendants "$c"; done; }
tree_ticks() { local s=0 p t; for p in $(descendants "$1"); do t=$(awk '{print $14+$15}' /proc/$p/stat 2>/dev/null) && s=$((s + ${t:-0})); done; echo $s; }
tree_rss_kb() { local s=0 p r; for p in $(descendants "$1"); do r=$(awk '/^VmRSS/{print $2}' /proc/$p/status 2>/dev/null) && s=$((s + ${r:-0})); done; echo $s; }
# stop_tree PID [TENTHS]: TERM, then (after TENTHS tenths of a second, 30 by default) KILL, a
# process tree started here, by PID.
stop_tree() {
  local root=$1 tenths=${2:-30} pids p i
  pids=$(descendants "$root" | sort -rn)
  for p in $pids; do kill -TERM "$p" 2>/dev/null; done
  for i in $(seq 1 "$tenths"); do kill -0 "$root" 2>/dev/null || break; sleep 0.1; done
  for p in $pids; do kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null; done
  wait "$root" 2>/dev/null
}
