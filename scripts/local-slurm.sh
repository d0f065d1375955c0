#!/usr/bin/env bash
# A one-node SLURM on localhost, for testing the `slurm/` profile with real sbatch/squeue.
#
#   scripts/local-slurm.sh up     install (apt) if missing, write the config, start munge + SLURM
#   scripts/local-slurm.sh down   stop what `up` started, by the pids it recorded
#   scripts/local-slurm.sh status
#
# Needs root and Debian/Ubuntu packages (munge, slurmctld, slurmd, slurm-client). No systemd,
# cgroups or accounting database: jobs are tracked with squeue (the profile says so). The node gets
# FAKE_GPUS fake GPU devices (character devices with the numbers of /dev/null: nothing real is
# exposed), so rules that ask for GPUs really schedule on GPUs and see CUDA_VISIBLE_DEVICES.
# It refuses to overwrite a slurm.conf it did not write, so it never touches a real cluster's setup.
set -euo pipefail

CONF_DIR=${SLURM_CONF_DIR:-/etc/slurm}
STATE_DIR=${LOCAL_SLURM_STATE:-/var/lib/slurm/local}
FAKE_GPUS=${FAKE_GPUS:-2}
MARKER="# written by fst-workflow scripts/local-slurm.sh"
PIDS="$STATE_DIR/pids"

die() { echo "local-slurm: $*" >&2; exit 1; }

install_packages() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null && return
    echo "local-slurm: installing munge and SLURM (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q munge slurmctld slurmd slurm-client >/dev/null \
        || { apt-get update -q >/dev/null && apt-get install -y -q munge slurmctld slurmd slurm-client >/dev/null; }
}

write_config() {
    local conf="$CONF_DIR/slurm.conf" cpus mem
    if [[ -e $conf ]] && ! grep -qF "$MARKER" "$conf"; then
        die "$conf exists and was not written by this script; refusing to replace it"
    fi
    cpus=$(nproc)
    mem=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
    mkdir -p "$CONF_DIR" "$STATE_DIR/gpu" /run/slurm /var/log/slurm /var/lib/slurm/slurmctld /var/lib/slurm/slurmd
    for ((i = 0; i < FAKE_GPUS; i++)); do
        [[ -e $STATE_DIR/gpu/nvidia$i ]] || mknod "$STATE_DIR/gpu/nvidia$i" c 1 3
    done
    cat >"$conf" <<EOF
$MARKER
ClusterName=local
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
# No cgroups or systemd here.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without it a job with no --mem takes the whole node.
DefMemPerCPU=500
# A request the node can never satisfy fails at sbatch instead of pending forever.
EnforcePartLimits=ALL
SchedulerParameters=batch_sched_delay=0
MailProg=/bin/true
# Finished jobs stay visible to squeue this long (the profile polls squeue, no accounting here).
MinJobAge=300
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Gres=gpu:fake:$FAKE_GPUS State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    {
        echo "$MARKER"
        if ((FAKE_GPUS > 0)); then
            echo "NodeName=localhost Name=gpu Type=fake File=$STATE_DIR/gpu/nvidia[0-$((FAKE_GPUS - 1))]"
        fi
    } >"$CONF_DIR/gres.conf"
}

wait_for() {  # wait_for SECONDS COMMAND...: poll until the command succeeds
    local deadline=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.5
    done
}

start_daemon() {  # start_daemon NAME PIDFILE COMMAND...: start it and record its pid
    local name=$1 pidfile=$2
    shift 2
    "$@"
    wait_for 20 test -s "$pidfile" || die "$name did not start (see /var/log/slurm/ or syslog)"
    echo "$name $(cat "$pidfile")" >>"$PIDS"
}

recorded_alive() {  # true when every daemon recorded in $PIDS is still running
    local name pid
    while read -r name pid; do
        kill -0 "$pid" 2>/dev/null || return 1
    done <"$PIDS"
}

up() {
    [[ $(id -u) == 0 ]] || die "run as root (it installs packages and starts daemons)"
    if [[ -s $PIDS ]]; then
        if recorded_alive; then
            echo "local-slurm: already up (pids in $PIDS); using it"
            return 0
        fi
        # A run that was killed, or a machine that was restarted, leaves its pid list behind.
        echo "local-slurm: a daemon in $PIDS is gone (left by an earlier run); restarting"
        down
    fi
    install_packages
    write_config
    : >"$PIDS"
    if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        mkdir -p /run/munge && chown munge: /run/munge
        start_daemon munged /run/munge/munged.pid runuser -u munge -- /usr/sbin/munged
    fi
    # -c: start from a clean state (no node left DRAINED, no job of an earlier run).
    start_daemon slurmctld /run/slurm/slurmctld.pid /usr/sbin/slurmctld -c -i
    start_daemon slurmd /run/slurm/slurmd.pid /usr/sbin/slurmd -N localhost
    wait_for 30 sh -c 'sinfo -h -o %t | grep -qx idle' || die "the node did not become idle: $(sinfo 2>&1)"
    echo "local-slurm: up: $(sinfo -h -o '%P %D %t %c CPUs %m MB %G')"
}

down() {
    [[ -s $PIDS ]] || { echo "local-slurm: nothing to stop"; return 0; }
    # Stop in reverse start order; each by the pid recorded at start.
    tac "$PIDS" | while read -r name pid; do
        kill "$pid" 2>/dev/null || continue
        wait_for 30 sh -c "! kill -0 $pid" || { echo "local-slurm: $name ($pid) ignored TERM, killing"; kill -9 "$pid"; }
        echo "local-slurm: stopped $name ($pid)"
    done
    rm -f "$PIDS"
}

case ${1:-} in
    up) up ;;
    down) down ;;
    status) [[ -s $PIDS ]] && cat "$PIDS" && sinfo ;;
    *) die "usage: $0 up|down|status" ;;
esac
