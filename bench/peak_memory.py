"""Run a command; print its wall time, CPU time and peak memory with every process it starts counted (a pipeline run
is a driver, a Prefect server, Ray's processes and its workers, so the largest single process says little).

    .venv/bin/python bench/peak_memory.py -- .venv/bin/logdiff run cifar10-cpu data.source=folder data.path=train.zip

Memory: the peak over time of the summed proportional set size (PSS: a page shared by n processes counts 1/n, so
libraries loaded by every Ray worker count once), sampled every second over the command and its descendants;
the summed resident size (RSS, shared pages counted in every process) beside it. CPU time: user + system of the
command and every descendant it waited for (getrusage of the children).
"""
from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time

import psutil

GIB = 2**30


def tree_memory(root: psutil.Process) -> tuple[int, int, list[tuple[int, str]]]:
    """(summed PSS, summed RSS) in bytes of ``root`` and its descendants now (processes that end meanwhile skipped),
    and each process's (PSS, name): its command line's first words, which tell a Ray worker, a server, a stage."""
    pss = rss = 0
    each = []
    for process in [root, *root.children(recursive=True)]:
        try:
            info = process.memory_full_info()
            argv = process.cmdline()
            name = " ".join([argv[0].rsplit("/", 1)[-1], *argv[1:3]])[:70] if argv else process.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        pss += getattr(info, "pss", info.rss)  # PSS where the OS has it (Linux)
        rss += info.rss
        each.append((getattr(info, "pss", info.rss), name))
    return pss, rss, each


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--every", type=float, default=1.0, help="seconds between memory samples")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to measure after --")
    began = time.perf_counter()
    child = subprocess.Popen(command)
    root = psutil.Process(child.pid)
    peak_pss = peak_rss = 0
    at_peak, peak_at = [], 0.0
    while child.poll() is None:
        pss, rss, each = tree_memory(root)
        if pss > peak_pss:
            at_peak, peak_at = each, time.perf_counter() - began
        peak_pss, peak_rss = max(peak_pss, pss), max(peak_rss, rss)
        time.sleep(args.every)
    wall = time.perf_counter() - began
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"\nwall {wall / 60:.1f} min ({wall:.0f} s), CPU {(usage.ru_utime + usage.ru_stime) / 60:.1f} min, "
          f"peak memory {peak_pss / GIB:.2f} GiB (summed PSS of the process tree; summed RSS {peak_rss / GIB:.2f} "
          f"GiB), exit code {child.returncode}", file=sys.stderr)
    if at_peak:
        print(f"at the peak ({peak_at / 60:.1f} min in), the largest processes (PSS):", file=sys.stderr)
        for pss, name in sorted(at_peak, reverse=True)[:8]:
            print(f"  {pss / GIB:6.2f} GiB  {name}", file=sys.stderr)
    return child.returncode


if __name__ == "__main__":
    sys.exit(main())
