#!/usr/bin/env python3
"""Where the cores went during a benchmark phase, by process name.

    cpu.py snap > before      # every process's CPU ticks, and the machine's idle
    cpu.py diff before after  # cores used per name between the two snapshots
    cpu.py diff before after N  # the same, then on a second line the
                                # milliseconds of CPU (all processes) per item
                                # of N done in between (emails drained)

Reads /proc only, so it adds nothing to the phase it measures. Processes
that started in between count from zero; ones that exited in between are
not named, only counted together as "exited" (the load generator, run to
completion, and the benchmark's own short `psql` calls).
"""
import os
import sys

GROUPS = ("postgres", "sendonce-worker", "sendonce-api", "redis-server", "smtp-sink", "wrk", "oha")


def snap():
    with open("/proc/stat") as f:
        cpu = f.readline().split()[1:]
    # user nice system idle iowait irq softirq steal
    print("total", sum(int(x) for x in cpu[:8]))
    print("idle", int(cpu[3]) + int(cpu[4]))
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        # utime and stime are fields 14 and 15 of the whole line; starttime
        # (22) tells a reused pid from the process that had it before.
        key = f"{pid}@{fields[19]}"
        print(key, comm.replace(" ", "_"), int(fields[11]) + int(fields[12]))


def load(path):
    procs, machine = {}, {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 2:
                machine[parts[0]] = int(parts[1])
            else:
                procs[parts[0]] = (parts[1], int(parts[2]))
    return procs, machine


def diff(before_path, after_path, items=None):
    before, m0 = load(before_path)
    after, m1 = load(after_path)
    ncpu = os.cpu_count() or 1
    elapsed = (m1["total"] - m0["total"]) / ncpu  # ticks of wall time
    if elapsed <= 0:
        sys.exit("cpu.py: the snapshots are in the wrong order")
    used = {}
    for key, (comm, ticks) in after.items():
        # A kernel thread's name changes with its work; its pid@start does not.
        start = before.get(key, (comm, 0))[1]
        group = next((g for g in GROUPS if comm.startswith(g[:15])), "other")
        used[group] = used.get(group, 0) + (ticks - start)
    busy = ncpu - (m1["idle"] - m0["idle"]) / elapsed
    parts = [f"{g} {t / elapsed:.2f}" for g, t in sorted(used.items(), key=lambda kv: -kv[1]) if t > 0]
    # Busy time no live process accounts for: processes that exited in
    # between (the load generator, when it is run to completion).
    gone = busy - sum(used.values()) / elapsed
    if gone >= 0.01:
        parts.append(f"exited {gone:.2f}")
    print(f"busy {busy:.2f} of {ncpu} cores: " + ", ".join(parts))
    if items:
        # Busy time of every CPU, in seconds, whoever used it.
        busy_ticks = (m1["total"] - m0["total"]) - (m1["idle"] - m0["idle"])
        seconds = busy_ticks / os.sysconf("SC_CLK_TCK")
        print(f"{seconds * 1000 / items:.3f}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["snap"]:
        snap()
    elif sys.argv[1:2] == ["diff"] and len(sys.argv) in (4, 5):
        diff(sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) == 5 else None)
    else:
        sys.exit(__doc__)
