#!/usr/bin/env bash
# Stop the daemons slurm/start_local_cluster.sh DIR started (by their pid files), nothing else.
set -uo pipefail
dir=$(realpath -m "${1:?usage: stop_local_cluster.sh DIR}")
for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munge/munged.pid"; do
  if [ -f "$pidfile" ]; then
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -9 "$pid" 2>/dev/null
    rm -f "$pidfile"
  fi
done
