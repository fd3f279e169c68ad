#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for the slurm tests and for trying
# hydra/launcher=slurm on a laptop: munged, MariaDB + slurmdbd (so sacct works, as submitit and
# people expect), slurmctld and slurmd, all under one state directory, on loopback ports.
#
#   tools/slurm-local.sh install            # the Debian packages, if missing (apt-get; CI)
#   tools/slurm-local.sh start [--install]  # --install: install first
#   export SLURM_CONF=/tmp/hybrid-exp-slurm/slurm.conf   # start prints this line
#   tools/slurm-local.sh status             # sinfo; exits 1 when the cluster is not up
#   tools/slurm-local.sh stop
#
# SLURM_LOCAL_DIR (default /tmp/hybrid-exp-slurm) holds configs, state, logs and the database;
# SLURM_LOCAL_PORT (default 16817) is the first of four ports: slurmctld, slurmd, slurmdbd,
# MariaDB. The node has this machine's cores and 90% of its memory, in two partitions on the
# same node: `debug` (default) and `urgent`, whose jobs preempt `debug`'s by requeueing them,
# as a busy cluster does. Jobs run as the user who started the cluster.
set -euo pipefail

dir="${SLURM_LOCAL_DIR:-/tmp/hybrid-exp-slurm}"
port="${SLURM_LOCAL_PORT:-16817}"
user="$(id -un)"
node="$(hostname -s)"
sbin=/usr/sbin
packages=(slurmctld slurmd slurmdbd slurm-client munge mariadb-server)

say() { echo "slurm-local: $*" >&2; }

install_packages() {
    missing >/dev/null || return 0
    local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${packages[@]}" >/dev/null
}

missing() {
    local program
    for program in $sbin/munged $sbin/slurmctld $sbin/slurmd $sbin/slurmdbd /usr/bin/sbatch \
                   /usr/sbin/mariadbd /usr/bin/mariadb-install-db; do
        [ -x "$program" ] || { echo "$program"; return 0; }
    done
    return 1
}

# Waits up to $1 seconds for the command that follows to succeed.
wait_for() {
    local deadline=$((SECONDS + $1)); shift
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || return 1
        sleep 0.25
    done
}

write_configs() {
    local cpus memory
    cpus="$(nproc)"
    memory=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) * 9 / 10 / 1024 ))  # MB
    mkdir -p "$dir"/{munge,state,spool,log,mysql}
    chmod 700 "$dir" "$dir/munge"
    cat > "$dir/slurm.conf" <<EOF
# written by tools/slurm-local.sh: a one-node cluster on loopback
ClusterName=hybridexp
SlurmctldHost=$node(127.0.0.1)
SlurmUser=$user
SlurmdUser=$user
SlurmctldPort=$port
SlurmdPort=$((port + 1))
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
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobRequeue=1
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
KillWait=10
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$((port + 2))
AccountingStoragePass=$dir/munge/munge.socket
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP PriorityTier=1
PartitionName=urgent Nodes=$node MaxTime=INFINITE State=UP PriorityTier=2
EOF
    cat > "$dir/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$((port + 2))
SlurmUser=$user
PidFile=$dir/slurmdbd.pid
LogFile=$dir/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$((port + 3))
StorageUser=slurm
StoragePass=slurm-local
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$dir/slurmdbd.conf"
}

start_munge() {
    [ -f "$dir/munge/munge.key" ] || {
        dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
        chmod 400 "$dir/munge/munge.key"
    }
    $sbin/munged --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
        --pid-file="$dir/munge/munged.pid" --log-file="$dir/log/munged.log" \
        --seed-file="$dir/munge/munged.seed" --force
    wait_for 10 munge --socket="$dir/munge/munge.socket" -n
}

start_database() {
    local fresh=""
    [ -d "$dir/mysql/mysql" ] || {
        fresh=1
        mariadb-install-db --no-defaults --datadir="$dir/mysql" --user="$user" \
            --auth-root-authentication-method=socket >"$dir/log/mariadb-install.log" 2>&1
    }
    /usr/sbin/mariadbd --no-defaults --datadir="$dir/mysql" --user="$user" \
        --socket="$dir/mysql.sock" --pid-file="$dir/mysql.pid" --bind-address=127.0.0.1 \
        --port=$((port + 3)) --log-error="$dir/log/mariadb.log" --innodb-buffer-pool-size=64M >>"$dir/log/mariadb.log" 2>&1 &
    wait_for 60 mariadb --no-defaults --socket="$dir/mysql.sock" -u root -e "select 1"
    [ -z "$fresh" ] || mariadb --no-defaults --socket="$dir/mysql.sock" -u root -e "
        CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm-local';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
}

start() {
    [ "${1:-}" = "--install" ] && install_packages
    local program
    if program="$(missing)"; then
        say "$program is missing: run 'tools/slurm-local.sh start --install' (or apt-get install ${packages[*]})"
        exit 1
    fi
    if status >/dev/null 2>&1; then
        say "already up in $dir"
    else
        stop >/dev/null 2>&1 || true
        write_configs
        start_munge || { say "munged did not start: $dir/log/munged.log"; exit 1; }
        start_database || { say "MariaDB did not start: $dir/log/mariadb.log"; exit 1; }
        export SLURM_CONF="$dir/slurm.conf"
        $sbin/slurmdbd  # reads slurmdbd.conf beside $SLURM_CONF
        wait_for 60 sacctmgr -n list cluster || { say "slurmdbd did not start: $dir/log/slurmdbd.log"; exit 1; }
        # a fresh database knows no cluster; slurmctld registers with it only if it is listed
        sacctmgr -i -n list cluster format=cluster | grep -qw hybridexp || sacctmgr -i add cluster hybridexp >/dev/null
        $sbin/slurmctld -f "$SLURM_CONF"
        $sbin/slurmd -f "$SLURM_CONF"
        # the node answers 'idle' once slurmd registered; a restarted node may come back 'down'
        wait_for 60 sinfo -h -n "$node" -o %T
        scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true
        if ! wait_for 60 bash -c "sinfo -h -n '$node' -o %T | grep -qx idle"; then
            say "the node did not come up idle: $dir/log/slurmctld.log, $dir/log/slurmd.log"
            exit 1
        fi
        say "up: $(nproc) CPUs on node $node, partitions debug (default) and urgent"
    fi
    echo "export SLURM_CONF=$dir/slurm.conf"
}

status() {
    [ -f "$dir/slurm.conf" ] || { say "not started ($dir/slurm.conf is missing)"; return 1; }
    SLURM_CONF="$dir/slurm.conf" sinfo -h -n "$node" -o "%P %T %C" || return 1
}

# Sends TERM to the daemon whose pid file is $1 and waits for it to end.
end() {
    local pid
    [ -f "$1" ] && pid="$(cat "$1")" && [ -n "$pid" ] || return 0
    kill "$pid" 2>/dev/null || return 0
    wait_for 30 bash -c "! kill -0 $pid" || kill -9 "$pid" 2>/dev/null || true
}

stop() {
    [ -d "$dir" ] || return 0
    end "$dir/slurmd.pid"
    end "$dir/slurmctld.pid"
    end "$dir/slurmdbd.pid"
    end "$dir/mysql.pid"
    end "$dir/munge/munged.pid"
    say "stopped (state kept in $dir; rm -r $dir to forget it)"
}

case "${1:-}" in
    install) install_packages ;;
    start) shift; start "$@" ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 install | start [--install] | status | stop" >&2; exit 2 ;;
esac
