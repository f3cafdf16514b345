#!/usr/bin/env python3
"""Draws build/bench/heartbeat_load's --csv: every heartbeat's round trip over the run (log
scale), the lease/10 target, and the store stall shaded; writes CSV.png and CSV.svg next to it.

    python3 bench/heartbeat_load_plot.py HEARTBEAT.csv [--out PREFIX]

Reads HEARTBEAT.csv ("t_s,agent,rtt_ms,ok") and HEARTBEAT.csv.meta.json. Needs matplotlib
(Debian: apt-get install python3-matplotlib; then run it with /usr/bin/python3)."""
import argparse
import csv
import json
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--out", help="output prefix (default: the CSV path without .csv)")
    a = ap.parse_args()
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("heartbeat_load_plot: no matplotlib (apt-get install python3-matplotlib); "
              "no figure", file=sys.stderr)
        return 2
    with open(a.csv + ".meta.json") as f:
        meta = json.load(f)
    ok_t, ok_ms, bad_t = [], [], []
    with open(a.csv) as f:
        for row in csv.DictReader(f):
            t, ms = float(row["t_s"]), float(row["rtt_ms"])
            if row["ok"] == "1":
                ok_t.append(t)
                ok_ms.append(max(ms, 1e-3))
            else:
                bad_t.append(t)
    prefix = a.out or (a.csv[:-4] if a.csv.endswith(".csv") else a.csv)

    fig, ax = plt.subplots(figsize=(10, 4.8))
    if meta.get("stall_begin_s", -1) >= 0:
        ax.axvspan(meta["stall_begin_s"], meta["stall_end_s"], color="tab:red", alpha=0.15,
                   label="store stall: %s sleeps %d ms" % (meta["stall_op"], meta["stall_ms"]))
    ax.scatter(ok_t, ok_ms, s=4, alpha=0.5, color="tab:blue", label="heartbeat round trip",
               rasterized=True)  # thousands of points: a bitmap layer in the SVG
    target = meta["target_ms"]
    ax.axhline(target, color="tab:green", linestyle="--",
               label="target: lease/10 = %g ms" % target)
    ax.axhline(meta["lease_ms"], color="tab:red", linestyle=":",
               label="lease = %d ms" % meta["lease_ms"])
    for t in bad_t:
        ax.axvline(t, color="black", alpha=0.3, linewidth=0.5)
    ax.set_yscale("log")
    ax.set_xlabel("seconds since the agents started")
    ax.set_ylabel("round trip (ms)")
    verdict = "PASS" if meta["heartbeat_pass"] and meta["lease_pass"] else "FAIL"
    ax.set_title(
        "Heartbeats: %d agents, %d jobs, %d watchers; p50 %.2f ms, p99 %.1f ms, max %.0f ms; "
        "leases lost %d, re-registrations %d: %s"
        % (meta["agents"], meta["jobs"], meta["watchers"], meta["p50_ms"], meta["p99_ms"],
           meta["max_ms"], meta["jobs_with_lease_lost"], meta["reregistrations"], verdict),
        fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    for ext in ("png", "svg"):
        fig.savefig(prefix + "." + ext, dpi=120)
    print("wrote %s.png and %s.svg" % (prefix, prefix))
    return 0


if __name__ == "__main__":
    sys.exit(main())
