#!/usr/bin/env bash
# stop_slurm.sh - stop what start_slurm.sh started, by the PIDs in its pid files (never by name).
#   --purge  also delete slurmctld/slurmd state, job logs and the accounting DB (next start is clean)
set -uo pipefail
log() { echo "[stop_slurm $(date +%T)] $*"; }
stop_pidfile() {   # stop_pidfile NAME PIDFILE
  local name=$1 pf=$2 pid
  [ -s "$pf" ] || return 0
  pid=$(cat "$pf")
  if kill -0 "$pid" 2>/dev/null; then
    log "stopping $name (pid $pid)"
    kill -TERM "$pid"
    for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && { log "$name still alive, SIGKILL"; kill -KILL "$pid"; }
  fi
  rm -f "$pf"
}
# cancel queued/running jobs while the controller is still up
if [ -s /run/slurm/slurmctld.pid ] && kill -0 "$(cat /run/slurm/slurmctld.pid)" 2>/dev/null; then
  ids=$(squeue -h -o %A 2>/dev/null | tr '\n' ' ')
  [ -n "${ids// /}" ] && { log "cancelling jobs: $ids"; scancel $ids; sleep 1; }
fi
stop_pidfile slurmd    /run/slurm/slurmd.pid
stop_pidfile slurmctld /run/slurm/slurmctld.pid
stop_pidfile slurmdbd  /run/slurm/slurmdbd.pid
if [ "${1:-}" = "--purge" ] && mysqladmin ping >/dev/null 2>&1; then
  log "dropping accounting database"; mysql -e "DROP DATABASE IF EXISTS slurm_acct_db"
fi
stop_pidfile mariadbd  /run/mysqld/mysqld.pid
stop_pidfile munged    /run/munge/munged.pid
if [ "${1:-}" = "--purge" ]; then
  log "purging slurm state and logs"
  rm -rf /var/lib/slurm/slurmctld/* /var/lib/slurm/slurmd/* /var/log/slurm/*
fi
log "done"
