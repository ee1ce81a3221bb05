#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine, for the Slurm integration tests.
#
# Usage: tests/slurm/cluster.sh start|stop|status
#   start   install the packages if missing, write the config, start munged, slurmctld and
#           slurmd, and wait until the node is idle (no-op when already running)
#   stop    stop the three daemons by the PIDs in their pid files (never by name)
#   status  daemon PIDs and `sinfo`; exit status 0 only when all three daemons run
#
# Needs root, Debian/Ubuntu (apt-get) and works without systemd. Everything the cluster
# writes (state, spool, logs, pid files, the munge socket) lives under $OLN_SLURM_DIR
# (default /tmp/oln-slurm). Outside it: /etc/slurm/slurm.conf and gres.conf (Slurm's default
# path; the Snakemake job step drops SLURM_CONF from the environment of `srun` inside a job,
# so a config elsewhere does not work; existing files not written by this script are never
# overwritten, and `stop` removes ours), /etc/hosts (hostname entry, only when the hostname
# does not resolve) and /etc/munge/munge.key (created only when missing).
# Environment:
#   OLN_SLURM_DIR       state directory (default /tmp/oln-slurm)
#   OLN_SLURM_TIMEOUT   seconds to wait for the node to become idle (default 60)
#   OLN_SLURM_PORT      slurmctld port; slurmd uses the next one (default 6817)
#   OLN_SLURM_FAKE_GPUS GPUs the node advertises as generic resource `gpu` (default 2; 0 = none).
#                       Bookkeeping only (empty files as devices): a job asking for GPUs is
#                       scheduled and gets a GPU allocation, so GPU requests can be tested on CPU.
set -euo pipefail

DIR=${OLN_SLURM_DIR:-/tmp/oln-slurm}
TIMEOUT=${OLN_SLURM_TIMEOUT:-60}
CTLD_PORT=${OLN_SLURM_PORT:-6817}
SLURMD_PORT=$((CTLD_PORT + 1))
FAKE_GPUS=${OLN_SLURM_FAKE_GPUS:-2}
SLURM_CONF=/etc/slurm/slurm.conf
GRES_CONF=/etc/slurm/gres.conf
MARKER="# Written by tests/slurm/cluster.sh"
MUNGE_DIR=$DIR/munge
MUNGE_SOCKET=$MUNGE_DIR/munge.socket
MUNGE_KEY=/etc/munge/munge.key
PACKAGES=(slurmctld slurmd slurm-client munge)

# daemon name -> pid file and the executable name its /proc/<pid>/comm must show
declare -A PIDFILE=([munged]=$MUNGE_DIR/munged.pid [slurmctld]=$DIR/slurmctld.pid [slurmd]=$DIR/slurmd.pid)

log() { echo "cluster.sh: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# PID of a daemon of ours that is alive (and is that program), else nothing.
live_pid() {
    local name=$1 file=${PIDFILE[$1]} pid
    [[ -s $file ]] || return 1
    pid=$(<"$file")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/comm && $(<"/proc/$pid/comm") == "$name" ]] || return 1
    echo "$pid"
}

node_state() { sinfo -h -o %T 2>/dev/null | head -n1; }

install_packages() {
    local missing=()
    for pkg in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    [[ $(id -u) == 0 ]] || die "packages ${missing[*]} are missing and installing them needs root"
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >"$DIR/apt.log" 2>&1; then
        log "apt-get install failed; running apt-get update and retrying"
        apt-get update -q >>"$DIR/apt.log" 2>&1 || { tail -n 20 "$DIR/apt.log" >&2; die "apt-get update failed"; }
        apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$DIR/apt.log" 2>&1 \
            || { tail -n 20 "$DIR/apt.log" >&2; die "apt-get install ${missing[*]} failed (log: $DIR/apt.log)"; }
    fi
}

# The node name (short hostname) must resolve for slurmctld and slurmd to find each other.
ensure_hostname_resolves() {
    local host
    host=$(hostname -s)
    if ! getent hosts "$host" >/dev/null; then
        log "adding '127.0.0.1 $host' to /etc/hosts"
        echo "127.0.0.1 $host" >>/etc/hosts
    fi
}

ensure_munge_key() {
    if [[ ! -s $MUNGE_KEY ]]; then
        log "creating $MUNGE_KEY"
        install -d -o munge -g munge -m 700 "$(dirname "$MUNGE_KEY")"
        mungekey --create --keyfile="$MUNGE_KEY"
        chown munge:munge "$MUNGE_KEY"
        chmod 400 "$MUNGE_KEY"
    fi
}

write_config() {
    local node host
    host=$(hostname -s)
    # First line of `slurmd -C`: NodeName=... CPUs=... Boards=... ... RealMemory=...
    node=$(slurmd -C | head -n1)
    [[ $node == NodeName=* ]] || die "unexpected 'slurmd -C' output: $node"
    local file gres_types="" gres=""
    for file in "$SLURM_CONF" "$GRES_CONF"; do
        if [[ -e $file ]] && ! head -n1 "$file" | grep -qF "$MARKER"; then
            die "$file exists and was not written by this script; not overwriting it"
        fi
    done
    if ((FAKE_GPUS > 0)); then
        gres_types="GresTypes=gpu"
        gres=" Gres=gpu:$FAKE_GPUS"
    fi
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log" "$(dirname "$SLURM_CONF")"
    cat >"$SLURM_CONF" <<EOF
$MARKER (state in $DIR): a single-node test cluster, no accounting, no cgroups.
ClusterName=oln-test
SlurmctldHost=$host
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=${PIDFILE[slurmctld]}
SlurmdPidFile=${PIDFILE[slurmd]}
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
MpiDefault=none
# no systemd/cgroups here: track processes by parent PID, no task binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
# reject at submission a job the node can never run (more CPUs/memory than it has) instead of
# leaving it pending forever, so Snakemake reports the error instead of waiting
EnforcePartLimits=ALL
# cores and memory are consumable; without DefMemPerCPU a job without --mem takes the whole node
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=512
# a node that restarts comes back by itself
ReturnToService=2
# finished jobs stay visible to squeue for 10 min (the Snakemake plugin polls squeue)
MinJobAge=600
InactiveLimit=0
KillWait=10
SlurmctldTimeout=30
SlurmdTimeout=60
$gres_types
$node$gres State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    # fake GPUs: empty files standing in for device files (slurmd counts GPUs by their files)
    {
        echo "$MARKER (state in $DIR): $FAKE_GPUS fake GPUs (empty files), for scheduling tests."
        echo "AutoDetect=off"
        if ((FAKE_GPUS > 0)); then
            mkdir -p "$DIR/fake-gpus"
            for ((i = 0; i < FAKE_GPUS; i++)); do : >"$DIR/fake-gpus/gpu$i"; done
            echo "NodeName=$host Name=gpu File=$DIR/fake-gpus/gpu[0-$((FAKE_GPUS - 1))]"
        fi
    } >"$GRES_CONF"
}

start_munged() {
    live_pid munged >/dev/null && return 0
    install -d -o munge -g munge -m 755 "$MUNGE_DIR"
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
    runuser -u munge -- munged --socket="$MUNGE_SOCKET" --key-file="$MUNGE_KEY" \
        --pid-file="${PIDFILE[munged]}" --log-file="$MUNGE_DIR/munged.log" \
        --seed-file="$MUNGE_DIR/munged.seed" \
        || { tail -n 20 "$MUNGE_DIR/munged.log" >&2 || true; die "munged did not start"; }
}

start_slurm_daemon() {
    local name=$1
    live_pid "$name" >/dev/null && return 0
    # -c in slurmctld: start with a clean job state (left-over jobs of a previous run are dropped)
    if [[ $name == slurmctld ]]; then
        slurmctld -c -f "$SLURM_CONF" || die "slurmctld did not start (log: $DIR/log/slurmctld.log)"
    else
        slurmd -f "$SLURM_CONF" || die "slurmd did not start (log: $DIR/log/slurmd.log)"
    fi
}

wait_idle() {
    local deadline=$((SECONDS + TIMEOUT)) state=""
    while ((SECONDS < deadline)); do
        state=$(node_state)
        [[ $state == idle || $state == mixed || $state == allocated ]] && return 0
        sleep 0.5
    done
    log "node not idle after ${TIMEOUT}s (state: '${state:-no answer}'); log tails follow"
    for f in "$MUNGE_DIR/munged.log" "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log"; do
        [[ -f $f ]] && { echo "--- $f" >&2; tail -n 15 "$f" >&2; }
    done
    die "the Slurm test cluster did not come up"
}

cmd_start() {
    if live_pid munged >/dev/null && live_pid slurmctld >/dev/null && live_pid slurmd >/dev/null \
        && [[ $(node_state) =~ ^(idle|mixed|allocated)$ ]]; then
        log "already running ($DIR)"
        return 0
    fi
    local t0=$SECONDS
    mkdir -p "$DIR"
    install_packages
    ensure_hostname_resolves
    ensure_munge_key
    live_pid slurmctld >/dev/null || write_config
    start_munged
    start_slurm_daemon slurmctld
    start_slurm_daemon slurmd
    wait_idle
    log "up in $((SECONDS - t0))s: node $(hostname -s) $(node_state); config $SLURM_CONF"
}

stop_daemon() {
    local name=$1 pid
    pid=$(live_pid "$name") || { rm -f "${PIDFILE[$name]}"; return 0; }
    kill -TERM "$pid"
    for _ in $(seq 50); do
        [[ -d /proc/$pid ]] || break
        sleep 0.2
    done
    if [[ -d /proc/$pid ]]; then
        log "$name (pid $pid) did not exit after SIGTERM; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "${PIDFILE[$name]}"
}

cmd_stop() {
    stop_daemon slurmd
    stop_daemon slurmctld
    stop_daemon munged
    local file
    for file in "$SLURM_CONF" "$GRES_CONF"; do
        if [[ -f $file ]] && head -n1 "$file" | grep -qF "$MARKER (state in $DIR)"; then
            rm -f "$file"
        fi
    done
    log "stopped ($DIR)"
}

cmd_status() {
    local ok=0
    for name in munged slurmctld slurmd; do
        if pid=$(live_pid "$name"); then echo "$name: running (pid $pid)"; else echo "$name: stopped"; ok=1; fi
    done
    if ((ok == 0)); then
        sinfo || ok=1
    fi
    return $ok
}

case ${1:-} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
