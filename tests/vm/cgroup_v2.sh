#!/bin/sh
# The init of the cgroup v2 test guest (tests/tests/cgroup_v2.rs): mounts a cgroup v2-only
# machine, runs `mesofs dev` on it, drives a framework through the mount, and prints what it
# saw as `FACT <key> <value>` lines on the console. The test on the host judges the facts;
# this script only reports them, so that a failure shows the whole picture.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup
insmod /fuse.ko
ip link set lo up
hostname guest

fact() { echo "FACT $1 $2"; }
# Waits up to $1 seconds for the command in $2 to succeed.
wait_for() {
    n=$(($1 * 10))
    while [ $n -gt 0 ]; do
        sh -c "$2" >/dev/null 2>&1 && return 0
        sleep 0.1
        n=$((n - 1))
    done
    return 1
}
finish() {
    fact done "$1"
    echo "---- mesofs dev log ----"
    cat /tmp/dev.log
    poweroff -f
}

# 63677270 is CGROUP2_SUPER_MAGIC.
fact cgroup_magic "$(stat -f -c %t /sys/fs/cgroup)"
fact controllers "$(cat /sys/fs/cgroup/cgroup.controllers)"

start_dev() {
    /mesofs dev --mount /mnt --data-dir /tmp/data \
        --resources 'cpus:2;mem:512;disk:100;ports:[31000-31009]' >>/tmp/dev.log 2>&1 &
    dev=$!
    wait_for 120 '[ "$(cat /mnt/agents/*/state)" = active ]' || finish "mesofs dev did not come up"
}
start_dev
fact isolator "$(grep -o 'isolator="[a-z0-9-]*"' /tmp/dev.log | head -n 1)"
mkdir /mnt/frameworks/v2 || finish "mkdir of the framework failed"
# Absolute paths: a restart of mesofs dev makes a new mount.
export f=/mnt/frameworks/v2
offer=$(cat $f/offers/next)
echo "name=short cpus=0.1 mem=32 -- echo hi" > "$f/offers/$offer/launch" || finish "launch refused"
fact short "$(cat $f/tasks/short/wait)"
fact short_stdout "$(cat $f/tasks/short/stdout)"

# A long task: its cgroup, where it is and what its limits are.
offer=$(cat $f/offers/next)
echo "name=long cpus=0.5 mem=48 -- sleep 601" > "$f/offers/$offer/launch" || finish "launch refused"
wait_for 60 '[ "$(cat $f/tasks/long/state)" = TASK_RUNNING ]'
fact long_state "$(cat $f/tasks/long/state)"
group=$(ls -d /sys/fs/cgroup/mesofs/agent-*/v2-*.long)
fact long_group "${group#/sys/fs/cgroup}"
sleeper=$(pidof sleep)
fact sleep_pid "$sleeper"
fact sleep_cgroup "$(cat /proc/$sleeper/cgroup)"
fact memory_max "$(cat $group/memory.max)"
fact cpu_max "$(cat $group/cpu.max)"
fact pids_max "$(cat $group/pids.max)"
fact subtree_control "$(cat $(dirname $group)/cgroup.subtree_control)"

# A crash of the agent leaves the task running; the agent started again takes it back.
kill -9 $dev
wait $dev
start_dev
fact long_after_restart "$(cat $f/tasks/long/state)"
fact sleep_after_restart "$(pidof sleep)"
echo > $f/tasks/long/kill
fact long "$(cat $f/tasks/long/wait)"
fact sleep_left "$(pidof sleep)"
fact long_group_left "$(ls -d $group 2>/dev/null)"

# A task over its memory limit: dd's 100 MB buffer does not fit in 32 MB.
offer=$(cat $f/offers/next)
echo "name=hog cpus=0.1 mem=32 -- dd if=/dev/zero of=/dev/null bs=100M count=1; echo survived" \
    > "$f/offers/$offer/launch" || finish "launch refused"
fact hog "$(cat $f/tasks/hog/wait)"
fact hog_reason "$(sed -n 's/.*"reason": "\([A-Z_]*\)".*/\1/p' $f/tasks/hog/status.json | tail -n 1)"
fact hog_stdout "$(cat $f/tasks/hog/stdout)"

rmdir /mnt/frameworks/v2 || finish "rmdir of the framework failed"
kill -INT $dev
wait $dev
fact dev_exit "$?"
fact mounted "$(grep -c ' /mnt ' /proc/mounts)"
fact groups_left "$(find /sys/fs/cgroup/mesofs -mindepth 2 -type d | wc -l)"
finish ok
