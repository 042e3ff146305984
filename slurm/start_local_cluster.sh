#!/usr/bin/env bash
# Start a single-node SLURM cluster on localhost (Debian slurm-wlm + munge) for tests and trials.
# Everything it writes (munge key and socket, slurm.conf, state, logs, pid files) lives in DIR,
# so system daemons are untouched; slurm/stop_local_cluster.sh DIR stops only what this started.
#   sudo apt-get install slurm-wlm munge
#   eval "$(slurm/start_local_cluster.sh /tmp/lifelong-slurm)"   # exports SLURM_CONF
set -euo pipefail
dir=$(realpath -m "${1:?usage: start_local_cluster.sh DIR}")
host=$(hostname -s)
ctld_port=${LIFELONG_SLURMCTLD_PORT:-16817}
slurmd_port=${LIFELONG_SLURMD_PORT:-16818}
mkdir -p "$dir"/state "$dir"/spool "$dir"/log "$dir"/munge
chmod 700 "$dir"/munge

if [ ! -f "$dir/munge/munge.key" ]; then
  head -c 1024 /dev/urandom > "$dir/munge/munge.key"
  chmod 400 "$dir/munge/munge.key"
fi
munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
  --pid-file="$dir/munge/munged.pid" --log-file="$dir/log/munged.log" --seed-file="$dir/munge/munged.seed"

memory_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
cat > "$dir/slurm.conf" <<CONF
ClusterName=lifelong
SlurmctldHost=$host
SlurmUser=$(id -un)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=30
SchedulerType=sched/backfill
NodeName=$host NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$memory_mb State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF

export SLURM_CONF="$dir/slurm.conf"
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
for _ in $(seq 1 60); do
  if sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
    echo "export SLURM_CONF=$SLURM_CONF"
    exit 0
  fi
  sleep 0.5
done
echo "local SLURM cluster did not come up; logs in $dir/log" >&2
exit 1
