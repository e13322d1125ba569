"""The demo on one node (today's default: local Ray, outputs in the experiment folder, SQLite tracking) against the
same demo on the two-node cluster of ``bench/local_cluster.py`` (S3 store, tracking server, DVC remote), back to
back on this machine; and the time the cluster run spends moving artifacts to and from the store.

    python bench/cluster_demo.py                                  # the demo preset as it is (a quiet machine)
    python bench/cluster_demo.py train.steps=1500 eval.num_samples=898   # smaller, e.g. under contention

Both runs get the same CPUs (one node of 2, or two of 1) and fresh projects; the cluster's servers start before
its clock starts. Wall times on a shared machine are noisy: compare them only within one invocation.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from local_cluster import BUCKET, S3, VENV, LocalCluster  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STORE_LINE = re.compile(r"store: (\w+) .*?([\d.]+) MB moved, ([\d.]+) s\)")
DVC_LINE = re.compile(r"dvc: (pulled|pushed) .* in ([\d.]+) s")


def timed_run(argv: list[str], env: dict, log: Path) -> float:
    began = time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.run(argv, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - began
    if code != 0:
        raise SystemExit(f"{' '.join(argv[:3])} failed ({code}); see {log}")
    return seconds


def transfers(log: Path) -> dict[str, tuple[int, float, float]]:
    """Per kind of transfer (published, fetched, saved, loaded; dvc pulled, pushed): count, MB, seconds."""
    totals: dict[str, list[float]] = {}
    text = log.read_text()
    for kind, mb, seconds in STORE_LINE.findall(text):
        entry = totals.setdefault(kind, [0, 0.0, 0.0])
        entry[0] += 1
        entry[1] += float(mb)
        entry[2] += float(seconds)
    for kind, seconds in DVC_LINE.findall(text):
        entry = totals.setdefault(f"dvc {kind}", [0, 0.0, 0.0])
        entry[0] += 1
        entry[2] += float(seconds)
    return {kind: (int(n), mb, s) for kind, (n, mb, s) in totals.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="config overrides for both runs (key=value)")
    args = parser.parse_args(argv)
    logdiff = str(VENV / "bin" / "logdiff")
    with tempfile.TemporaryDirectory(prefix="logdiff-bench-") as tmp:
        base = Path(tmp)
        cluster = LocalCluster(base, hidden=[ROOT, base])
        local_env = {k: v for k, v in cluster.env.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
        (base / "logs").mkdir()
        one = timed_run([logdiff, "run", "demo", *args.overrides, "--project-dir", str(base / "one")], local_env,
                        base / "logs" / "one-node.log")
        print(f"one node: {one:.0f} s", flush=True)
        cluster.start()
        try:
            settings = [f"cluster.storage=s3://{BUCKET}/bench", f"cluster.endpoint={S3}",
                        f"cluster.dvc_remote=s3://{BUCKET}/dvc"]
            two = timed_run([logdiff, "run", "demo", *args.overrides, *settings, "--project-dir", str(base / "two")],
                            cluster.env, base / "logs" / "two-nodes.log")
            nodes = re.findall(r"(\S+): training on Ray node (.+)", (base / "logs" / "two-nodes.log").read_text())
        finally:
            cluster.stop()
        moved = transfers(base / "logs" / "two-nodes.log")
    print(f"\ndemo {' '.join(args.overrides) or '(preset as is)'}, back to back on this machine")
    print(f"{'run':<50}{'wall s':>8}")
    print(f"{'one node: local Ray (2 CPUs), folder, SQLite':<50}{one:>8.0f}")
    print(f"{'two nodes (1 + 1 CPU), S3 store, tracking server':<50}{two:>8.0f}   ({two / one:.2f}x)")
    print(f"\nmoving artifacts in the two-node run (each node's own clock; transfers overlap across nodes)")
    print(f"{'transfer':<24}{'count':>6}{'MB':>9}{'seconds':>9}")
    for kind, (count, mb, seconds) in sorted(moved.items()):
        print(f"{kind:<24}{count:>6}{mb:>9.2f}{seconds:>9.1f}")
    total = sum(s for _, _, s in moved.values())
    print(f"{'all':<24}{'':>6}{sum(mb for _, mb, _ in moved.values()):>9.2f}{total:>9.1f}   "
          f"({total / two:.0%} of the run's wall time, if none overlapped)")
    print("\nwhere each model trained: " + "; ".join(f"{model} on {node}" for model, node in nodes))
    return {"one_node_s": one, "two_nodes_s": two, "transfers": moved}


if __name__ == "__main__":
    main()
