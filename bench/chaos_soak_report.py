#!/usr/bin/env python3
"""The checks and the figure of bench/chaos_soak.sh, over what a finished run left in WORK:

    chaos_soak_report.py --work DIR/work --out DIR [--minutes M --seed S --lease-ms L
                         --max-attempts N]

  data/state.db     the coordinator's store (read with the stdlib sqlite3, the coordinator
                    stopped): studies, jobs (state, attempts and their outcomes), results
  studies.txt       "wave K STUDY JOBS": what the feeder submitted and how many jobs each plans
  fake_jobs.log     tests/service/fake_job.sh's "start|end JOB SECONDS PID" lines
  runs.log          bench/chaos_job.sh's "run JOB ATTEMPT PID SECONDS ATTEMPT_DIR" lines
  state-a*/attempts/JOB.N/exit.json   when each attempt's process ended (ended_ms)
  chaos.log         "SECONDS KIND WHAT": the faults
  timeline.csv      job states over time (rmgen status every second)

Writes OUT/summary.json, and OUT/chaos_soak.png and .svg when matplotlib imports. Exit status
0 when every check holds: no job lost (each submitted job is in the store, in its study, final
and SUCCEEDED; each study holds the jobs it planned; one study per wave), no result duplicated
(one result row per job), no split brain (no two runs of one job overlap; no attempt started
twice)."""
import argparse
import collections
import csv
import glob
import json
import os
import sqlite3
import sys


def read_lines(path):
    try:
        with open(path) as f:
            return [line.split() for line in f if line.strip()]
    except FileNotFoundError:
        return []


def runs_of(work):
    """Every run of a job: (job, attempt, pid, start, end, how the end is known)."""
    run_lines = collections.defaultdict(list)  # pid -> [(t, job, attempt, dir)]
    for w in read_lines(os.path.join(work, "runs.log")):
        if len(w) >= 6 and w[0] == "run":
            run_lines[w[3]].append((float(w[4]), w[1], int(w[2]), w[5]))
    starts, ends = [], {}
    for w in read_lines(os.path.join(work, "fake_jobs.log")):
        if len(w) < 4:
            continue
        if w[0] == "start":
            starts.append((w[1], float(w[2]), w[3]))
        elif w[0] == "end":
            ends[(w[1], w[3])] = float(w[2])  # (job, pid): a pid runs one job at a time
    runs, unmatched = [], 0
    for job, t, pid in starts:
        # The run line the same process wrote just before (pids are reused over a long run).
        cands = [r for r in run_lines.get(pid, []) if r[1] == job and r[0] <= t + 1e-3]
        if not cands:
            unmatched += 1
            continue
        _, _, attempt, adir = max(cands)
        end, how = ends.get((job, pid)), "end line"
        if end is not None and end < t:
            end = None  # the end of an earlier run of a reused pid
        if end is None:
            try:
                with open(os.path.join(adir, "exit.json")) as f:
                    end, how = json.load(f)["ended_ms"] / 1000.0, "exit.json"
            except (OSError, ValueError, KeyError):
                end, how = float("inf"), "unknown"
        runs.append({"job": job, "attempt": attempt, "pid": int(pid), "start": t, "end": end,
                     "end_from": how})
    return runs, unmatched


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--minutes", default="")
    ap.add_argument("--seed", default="")
    ap.add_argument("--lease-ms", type=int, default=0)
    ap.add_argument("--max-attempts", type=int, default=0)
    a = ap.parse_args()
    work = a.work
    failures = []

    # ---- what was submitted, what the store holds ----
    waves = [w for w in read_lines(os.path.join(work, "studies.txt")) if w[0] == "wave"]
    planned = {}  # study -> jobs
    for w in waves:
        if w[2] == "SUBMIT-FAILED" or not w[2]:
            failures.append("wave %s was not submitted" % w[1])
            continue
        if w[2] in planned:
            failures.append("waves share study %s" % w[2])
        planned[w[2]] = int(w[3])
    submitted = sum(planned.values())
    db = sqlite3.connect("file:%s?mode=ro" % os.path.join(work, "data", "state.db"), uri=True)
    studies = {sid: json.loads(body) for sid, body in db.execute("SELECT id, body FROM studies")}
    jobs = {}
    for jid, sid, state, body in db.execute("SELECT id, study_id, state, body FROM jobs"):
        jobs[jid] = {"study": sid, "state": state, "body": json.loads(body)}
    results = collections.Counter(j for (j,) in db.execute("SELECT job_id FROM results"))
    db.close()

    if len(studies) != len(planned):
        failures.append("%d studies in the store for %d waves submitted"
                        % (len(studies), len(planned)))
    per_study = collections.Counter(j["study"] for j in jobs.values())
    missing_jobs = 0
    for sid, n in planned.items():
        if sid not in studies:
            failures.append("study %s is not in the store" % sid)
        if per_study.get(sid, 0) != n:
            missing_jobs += max(0, n - per_study.get(sid, 0))
            failures.append("study %s holds %d jobs, planned %d" % (sid, per_study.get(sid, 0), n))
    states = collections.Counter(j["state"] for j in jobs.values())
    final = {"SUCCEEDED", "FAILED", "CANCELLED"}
    not_final = [jid for jid, j in jobs.items() if j["state"] not in final]
    not_succeeded = sorted(jid for jid, j in jobs.items() if j["state"] != "SUCCEEDED")
    lost = missing_jobs + len(not_final)
    if lost:
        failures.append("%d jobs lost (%d missing, %d not final: %s)"
                        % (lost, missing_jobs, len(not_final), " ".join(sorted(not_final)[:10])))
    failed = [jid for jid in not_succeeded if jobs[jid]["state"] in final]
    if failed:
        failures.append("%d jobs did not succeed: %s"
                        % (len(failed), "; ".join("%s %s (%s)" % (j, jobs[j]["state"],
                                                                   jobs[j]["body"].get("reason", ""))
                                                  for j in failed[:5])))
    duplicated = sorted(j for j, n in results.items() if n > 1)
    if duplicated:
        failures.append("%d jobs with more than one result: %s"
                        % (len(duplicated), " ".join(duplicated[:10])))
    no_result = sorted(j for j, x in jobs.items() if x["state"] == "SUCCEEDED" and not results[j])
    if no_result:
        failures.append("%d succeeded jobs without a result: %s"
                        % (len(no_result), " ".join(no_result[:10])))

    # Attempts: how many, and how they ended.
    outcomes = collections.Counter()
    attempts_hist = collections.Counter()
    for j in jobs.values():
        hist = j["body"].get("history", [])
        attempts_hist[len(hist)] += 1
        for h in hist:
            o = h.get("outcome", "")
            key = ("lease expired" if o.startswith("lease expired") else
                   o.split(":")[0] if o else "(live)")
            if o.startswith("failed") and "signal" in o:
                key = "failed: killed by a signal"
            elif o.startswith("failed") and "lease" in o:
                key = "failed: ranks stopped, lease lost"
            outcomes[key] += 1

    # ---- runs: split brain, attempts started twice ----
    runs, unmatched = runs_of(work)
    if unmatched:
        failures.append("%d fake_job.sh starts without their chaos_job.sh line" % unmatched)
    by_job = collections.defaultdict(list)
    for r in runs:
        by_job[r["job"]].append(r)
    overlaps, twice = [], []
    for job, rs in by_job.items():
        rs.sort(key=lambda r: r["start"])
        seen = collections.Counter(r["attempt"] for r in rs)
        twice += ["%s attempt %d started %d times" % (job, n, c) for n, c in seen.items() if c > 1]
        for i in range(len(rs)):
            for k in range(i + 1, len(rs)):
                if rs[k]["start"] < rs[i]["end"]:
                    overlaps.append({"job": job, "first": rs[i], "second": rs[k]})
    if overlaps:
        failures.append("%d overlapping runs (split brain): %s"
                        % (len(overlaps), "; ".join(
                            "%s attempts %d and %d" % (o["job"], o["first"]["attempt"],
                                                       o["second"]["attempt"])
                            for o in overlaps[:5])))
    if twice:
        failures.append("attempts started twice: " + "; ".join(twice[:5]))
    completed_runs = collections.Counter(r["job"] for r in runs if r["end_from"] == "end line")
    unknown_end = sum(1 for r in runs if r["end_from"] == "unknown")

    # ---- the faults and the timeline ----
    events = []
    for w in read_lines(os.path.join(work, "chaos.log")):
        events.append({"t": float(w[0]), "kind": w[1], "what": " ".join(w[2:])})
    kills = collections.Counter(e["kind"] for e in events
                                if e["kind"] in ("agent", "rank", "coordinator"))
    # Each attempt that did not succeed, by the fault just before its end (within 15 s): what
    # each kind of fault costs (e.g. how many running attempts a coordinator restart ends).
    kill_times = sorted((e["t"], e["kind"]) for e in events
                        if e["kind"] in ("agent", "rank", "coordinator"))
    ends_after = collections.Counter()
    for j in jobs.values():
        for h in j["body"].get("history", []):
            o = h.get("outcome", "")
            if not o or o == "succeeded":
                continue
            t = h.get("ended_ms", 0) / 1000.0
            before = [k for k in kill_times if k[0] <= t]
            kind = before[-1][1] if before and t - before[-1][0] < 15 else "no fault"
            ends_after["%s, after: %s" % ("lease expired" if o.startswith("lease") else
                                          o.split(":")[0], kind)] += 1
    timeline = []
    with open(os.path.join(work, "timeline.csv")) as f:
        for row in csv.DictReader(f):
            timeline.append({k: float(v) for k, v in row.items()})
    t0 = timeline[0]["t"] if timeline else (events[0]["t"] if events else 0)
    chaos_end = next((e["t"] for e in events if e["kind"] == "chaos-end"), None)
    drained = next((e for e in events if e["kind"] == "drained"), None)

    summary = {
        "pass": not failures,
        "failures": failures,
        "minutes": a.minutes,
        "seed": a.seed,
        "lease_ms": a.lease_ms,
        "max_attempts": a.max_attempts,
        "waves": len(waves),
        "studies_in_store": len(studies),
        "jobs_submitted": submitted,
        "jobs_in_store": len(jobs),
        "states": dict(states),
        "jobs_lost": lost,
        "jobs_not_succeeded": len(not_succeeded),
        "results_duplicated": len(duplicated),
        "succeeded_without_result": len(no_result),
        "split_brain_overlaps": len(overlaps),
        "attempts_started_twice": len(twice),
        "kills": dict(kills),
        "events": len(events),
        "runs": len(runs),
        "runs_end_unknown": unknown_end,
        "jobs_run_to_the_end_more_than_once": sum(1 for n in completed_runs.values() if n > 1),
        "jobs_by_attempts": {str(k): v for k, v in sorted(attempts_hist.items())},
        "attempt_outcomes": dict(outcomes),
        "attempts_ended_by_fault": dict(ends_after),
        "attempts_ended_per_coordinator_restart": round(
            sum(n for k, n in ends_after.items() if k.endswith(": coordinator"))
            / max(1, kills.get("coordinator", 0)), 2),
        "chaos_s": round(chaos_end - t0, 1) if chaos_end else None,
        "drain_s": round(drained["t"] - chaos_end, 1) if drained and chaos_end else None,
        "drained": drained["what"] if drained else None,
    }
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    print(json.dumps({k: summary[k] for k in (
        "pass", "jobs_submitted", "jobs_in_store", "states", "jobs_lost", "results_duplicated",
        "split_brain_overlaps", "attempts_started_twice", "kills", "jobs_by_attempts")}))
    for msg in failures:
        print("chaos_soak: FAIL: " + msg, file=sys.stderr)

    plot(a.out, timeline, events, t0, summary)
    return 0 if not failures else 1


def plot(out, timeline, events, t0, summary):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("chaos_soak: no matplotlib (Debian: apt-get install python3-matplotlib): "
              "summary.json only", file=sys.stderr)
        return
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True,
                                      gridspec_kw={"height_ratios": [1, 1.3]})

    def series(key):
        xs, ys, prev = [], [], None
        for row in timeline:
            x = row["t"] - t0
            if prev is not None and x - prev > 2.5:  # the coordinator was down: a gap
                xs.append((x + prev) / 2)
                ys.append(float("nan"))
            xs.append(x)
            ys.append(row[key])
            prev = x
        return xs, ys

    for key, color in (("SUCCEEDED", "tab:green"), ("FAILED", "tab:red"),
                       ("CANCELLED", "tab:gray")):
        xs, ys = series(key)
        if key == "SUCCEEDED" or any(y > 0 for y in ys if y == y):
            top.plot(xs, ys, color=color, label=key.lower())
    top.set_ylabel("jobs (cumulative)")
    for key, color in (("PENDING", "tab:olive"), ("QUEUED", "tab:blue"),
                       ("ASSIGNED", "tab:orange"), ("RUNNING", "tab:purple")):
        xs, ys = series(key)
        bottom.plot(xs, ys, color=color, label=key.lower(), linewidth=1)
    bottom.set_ylabel("jobs now")
    bottom.set_xlabel("seconds since the start")
    colors = {"agent": "tab:orange", "rank": "tab:purple", "coordinator": "tab:red"}
    labelled = set()
    for e in events:
        x = e["t"] - t0
        if e["kind"] in colors:
            for ax in (top, bottom):
                ax.axvline(x, color=colors[e["kind"]], alpha=0.6, linewidth=1, linestyle="--",
                           label=("kill: " + e["kind"]) if ax is top and e["kind"] not in labelled
                           else None)
            labelled.add(e["kind"])
        elif e["kind"] == "chaos-end":
            for ax in (top, bottom):
                ax.axvspan(x, max(x + 1, (timeline[-1]["t"] - t0) if timeline else x + 1),
                           color="tab:green", alpha=0.07,
                           label="no more faults" if ax is top else None)
    verdict = "PASS" if summary["pass"] else "FAIL"
    top.set_title(
        "Chaos soak: %d jobs, %d kills (agent %d, rank %d, coordinator %d); lost %d, "
        "duplicated results %d, overlapping runs %d, not succeeded %d: %s"
        % (summary["jobs_submitted"], sum(summary["kills"].values()),
           summary["kills"].get("agent", 0), summary["kills"].get("rank", 0),
           summary["kills"].get("coordinator", 0), summary["jobs_lost"],
           summary["results_duplicated"], summary["split_brain_overlaps"],
           summary["jobs_not_succeeded"], verdict), fontsize=9)
    top.legend(loc="upper left", fontsize=8)
    bottom.legend(loc="upper right", fontsize=8)
    for ax in (top, bottom):
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    for ext in ("png", "svg"):
        fig.savefig(os.path.join(out, "chaos_soak." + ext), dpi=120)
    print("chaos_soak: wrote %s/chaos_soak.png and .svg" % out)


if __name__ == "__main__":
    sys.exit(main())
