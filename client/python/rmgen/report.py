"""Reports with figures: `python -m rmgen.report STUDY... --out DIR` (or `rmgen report`).

Writes DIR/index.html (self-contained: the figures inline as SVG, the tables as HTML) and
DIR/figures/*.png and *.svg:
  fig3b_exrm_beats_dporm   share of runs where EXRM's accuracy beats DPORM's, ID and OOD
                           (the paper's Figure 3b, strict >, per (model, train set, seed))
  id_vs_ood_per_run        per run: EXRM against DPORM accuracy, ID and mean OOD
  per_eval_set             accuracy per eval set, EXRM and DPORM, mean +- std over seeds
  learning_curves          training loss against step for every training job
plus DIR/results.csv (the long form), DIR/per_seed.csv and DIR/results.json.
`--from-json FILE` renders a saved results.json without a coordinator (no learning curves).
"""
from __future__ import annotations

import argparse
import html
import io
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional

import pandas as pd

from .client import per_seed_frame

COLORS = {"EXRM": "#1f77b4", "DPORM": "#ff7f0e"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 10, "axes.spines.top": False,
                         "axes.spines.right": False, "svg.fonttype": "none",
                         "svg.hashsalt": "rmgen"})
    return plt


def long_frame(report: Dict) -> pd.DataFrame:
    """The per-eval-set rows of a results report: study, model, reward_model, eval_set,
    shift, seeds, mean, std."""
    rows = []
    for r in report.get("rows", []):
        for name, v in r.get("per_set", {}).items():
            rows.append({"study": r.get("study"), "model": r["model"],
                         "reward_model": r["reward_model"], "eval_set": name,
                         "shift": v.get("shift"), "seeds": v.get("n"), "mean": v.get("mean"),
                         "std": v.get("std")})
    return pd.DataFrame(rows, columns=["study", "model", "reward_model", "eval_set", "shift",
                                       "seeds", "mean", "std"])


def fig_wins(plt, report: Dict):
    w = report.get("exrm_beats_dporm", {})
    fig, ax = plt.subplots(figsize=(4.2, 3.4))
    labels, shares, notes = [], [], []
    for key, label in (("id", "ID"), ("ood", "OOD")):
        x = w.get(key, {})
        if not x.get("runs"):
            continue
        labels.append(label)
        shares.append(100.0 * x["exrm_wins"] / x["runs"])
        notes.append(f"{x['exrm_wins']}/{x['runs']}")
    bars = ax.bar(labels, shares, color=["#4c72b0", "#dd8452"][:len(labels)], width=0.55)
    for b, n, s in zip(bars, notes, shares):
        ax.annotate(f"{s:.0f}% ({n})", (b.get_x() + b.get_width() / 2, s),
                    ha="center", va="bottom", xytext=(0, 3), textcoords="offset points")
    ax.axhline(50, color="grey", lw=0.8, ls="--")
    ax.set_ylim(0, 110)
    ax.set_ylabel("runs where EXRM beats DPORM (%)")
    ax.set_title("EXRM vs DPORM (Figure 3b)")
    fig.tight_layout()
    return fig


def fig_id_vs_ood(plt, seeds: pd.DataFrame):
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.8))
    key = ["study", "model", "seed"]
    e = seeds[seeds["reward_model"] == "EXRM"].set_index(key)
    d = seeds[seeds["reward_model"] == "DPORM"].set_index(key)
    both = e.join(d, lsuffix="_exrm", rsuffix="_dporm", how="inner")
    for ax, col, title in ((axes[0], "id", "in distribution"), (axes[1], "ood", "mean OOD")):
        x, y = both[f"{col}_dporm"] * 100, both[f"{col}_exrm"] * 100
        ok = x.notna() & y.notna()
        ax.scatter(x[ok], y[ok], s=28, color="#4c72b0", edgecolor="white", zorder=3)
        if ok.any():
            lo = min(x[ok].min(), y[ok].min()) - 2
            hi = max(x[ok].max(), y[ok].max()) + 2
        else:
            lo, hi = 0, 100
        ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal")
        ax.set_xlabel("DPORM accuracy (%)")
        ax.set_ylabel("EXRM accuracy (%)")
        ax.set_title(f"{title}: {int(ok.sum())} runs")
    fig.suptitle("Per run (model, train set, seed): above the diagonal, EXRM is better")
    fig.tight_layout()
    return fig


def _empty(plt, title: str):
    fig, ax = plt.subplots(figsize=(5, 2.5))
    ax.axis("off")
    ax.text(0.5, 0.5, title, ha="center", va="center", color="#666")
    return fig


def fig_per_set(plt, long: pd.DataFrame):
    if long.empty:
        return _empty(plt, "no finished runs yet")
    order = {"ID": 0, "OOD": 1}  # in-distribution sets first, then shifted, then benchmarks
    firsts = long.drop_duplicates("eval_set")
    sets = sorted(firsts["eval_set"],
                  key=lambda s: (order.get(firsts.set_index("eval_set")["shift"][s], 2),
                                 list(firsts["eval_set"]).index(s)))
    groups = list(dict.fromkeys(zip(long["study"], long["model"])))
    fig, axes = plt.subplots(len(groups), 1, figsize=(max(6.0, 1.4 * len(sets) + 3),
                                                      3.2 * max(1, len(groups))),
                             squeeze=False)
    for ax, (study, model) in zip(axes[:, 0], groups):
        g = long[(long["study"] == study) & (long["model"] == model)]
        width = 0.38
        for i, rm in enumerate(("EXRM", "DPORM")):
            r = g[g["reward_model"] == rm].set_index("eval_set")
            xs = [k + (i - 0.5) * width for k in range(len(sets))]
            means = [r["mean"].get(s, float("nan")) * 100 for s in sets]
            errs = [(r["std"].get(s) or 0) * 100 if pd.notna(r["std"].get(s)) else 0
                    for s in sets]
            ax.bar(xs, means, width, yerr=errs, capsize=3, color=COLORS[rm], label=rm)
        shift = g.drop_duplicates("eval_set").set_index("eval_set")["shift"]
        ax.set_xticks(range(len(sets)))
        ax.set_xticklabels([f"{s}\n({shift.get(s, '')})" for s in sets], fontsize=8)
        ax.set_ylim(0, 100)
        ax.axhline(50, color="grey", lw=0.8, ls="--")  # chance
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{study} / {model}: mean +- std over seeds", loc="left")
        ax.legend(loc="lower left", bbox_to_anchor=(1.0, 0.0), frameon=False)
    fig.tight_layout()
    return fig


def fig_curves(plt, curves: List[Dict]):
    methods = sorted({c["method"] for c in curves}) or ["(none)"]
    fig, axes = plt.subplots(1, len(methods), figsize=(4.6 * len(methods), 3.6), squeeze=False)
    for ax, m in zip(axes[0], methods):
        for c in (c for c in curves if c["method"] == m):
            ax.plot(c["step"], c["loss"], lw=1.2, label=c["label"])
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.set_title({"exrm": "EXRM (reward)", "dpo": "DPO", "sft": "SFT"}.get(m, m))
        if len(ax.lines) <= 8:
            ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


def learning_curves(client, study_ids: List[str]) -> List[Dict]:
    curves = []
    for sid in study_ids:
        jobs = client.jobs(sid)
        for _, j in jobs[jobs["kind"].isin(["sft", "reward", "dpo"])].iterrows():
            ev = client.logs(j["id"]).events
            if ev.empty or "loss" not in ev or "step" not in ev:
                continue
            ev = ev[ev["loss"].notna() & ev["step"].notna()].drop_duplicates("step", keep="last")
            method = j["method"] or j["kind"]
            seed = "" if pd.isna(j["seed"]) else f" seed {int(j['seed'])}"
            curves.append({"method": method, "label": f"{j['model'] or ''}{seed}".strip(),
                           "step": list(ev["step"]), "loss": list(ev["loss"])})
    return curves


def _save(fig, out: Path, name: str) -> str:
    figs = out / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    fig.savefig(figs / f"{name}.png", dpi=150)
    fig.savefig(figs / f"{name}.svg")
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    svg = buf.getvalue()
    return svg[svg.index("<svg"):]


def render(report: Dict, out: Path, curves: Optional[List[Dict]] = None,
           long: Optional[pd.DataFrame] = None, tables_md: str = "") -> Path:
    """Writes the report for a results JSON (Client.results_json) into `out`."""
    plt = _plt()
    out.mkdir(parents=True, exist_ok=True)
    seeds = per_seed_frame(report)
    per_set = long_frame(report)
    if long is None:
        long = per_set
    sections = []
    figs = [("fig3b_exrm_beats_dporm", "EXRM beats DPORM, share of runs", fig_wins(plt, report)),
            ("id_vs_ood_per_run", "Per-run accuracy, EXRM against DPORM",
             fig_id_vs_ood(plt, seeds)),
            ("per_eval_set", "Accuracy per eval set", fig_per_set(plt, per_set))]
    if curves:
        figs.append(("learning_curves", "Learning curves", fig_curves(plt, curves)))
    for name, title, fig in figs:
        svg = _save(fig, out, name)
        plt.close(fig)
        sections.append(f"<h2>{html.escape(title)}</h2>\n<figure>{svg}<figcaption>"
                        f"figures/{name}.png, figures/{name}.svg</figcaption></figure>")
    long.to_csv(out / "results.csv", index=False)
    seeds.to_csv(out / "per_seed.csv", index=False)
    (out / "results.json").write_text(json.dumps(report, indent=1))
    runs = report.get("runs", {})
    studies = ", ".join(s.get("study", "") for s in report.get("studies", []))
    tables = long.to_html(index=False, na_rep="", float_format=lambda x: f"{x:.4f}",
                          classes="results")
    body = "\n".join(sections)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>rmgen report: {html.escape(studies)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
figure {{ margin: 0 0 2em 0; }} figure svg {{ max-width: 100%; height: auto; }}
figcaption {{ color: #666; font-size: 0.85em; }}
table.results {{ border-collapse: collapse; font-size: 0.85em; }}
table.results td, table.results th {{ border: 1px solid #ccc; padding: 2px 6px; }}
pre {{ background: #f6f6f6; padding: 1em; overflow-x: auto; font-size: 0.8em; }}
</style></head><body>
<h1>rmgen report</h1>
<p>Studies: {html.escape(studies)}. Runs finished: {runs.get('finished', '?')} of
{runs.get('expected', '?')}. {html.escape(report.get('std', ''))}</p>
{body}
<h2>Results, long form</h2>
{tables}
{f'<h2>Tables</h2><pre>{html.escape(tables_md)}</pre>' if tables_md else ''}
</body></html>
"""
    (out / "index.html").write_text(page)
    return out / "index.html"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="rmgen report", description=__doc__.split("\n")[0])
    ap.add_argument("studies", nargs="*", help="study ids")
    ap.add_argument("--tag", default="", help="every study with this tag")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--coordinator", default=None, help="HOST:PORT ($RMGEN_COORDINATOR)")
    ap.add_argument("--token-file", default=None, help="($RMGEN_TOKEN_FILE)")
    ap.add_argument("--tls-ca", default=None, help="the coordinator's CA (PEM): use TLS")
    ap.add_argument("--from-json", default=None, help="render a saved results.json")
    a = ap.parse_args(argv)
    out = Path(a.out)
    try:
        if a.from_json:
            report = json.loads(Path(a.from_json).read_text())
            path = render(report, out)
        else:
            if not a.studies and not a.tag:
                ap.error("give study ids or --tag")
            from .client import Client
            from .errors import RmgenError

            try:
                with Client(a.coordinator, token_file=a.token_file,
                            root_certificates=a.tls_ca) as c:
                    report = c.results_json(*a.studies, tag=a.tag)
                    ids = [s["id"] for s in report.get("studies", []) if s.get("id")]
                    path = render(report, out, curves=learning_curves(c, ids),
                                  long=c.results(*a.studies, tag=a.tag),
                                  tables_md=c.results_table(*a.studies, tag=a.tag))
            except RmgenError as e:
                print(f"rmgen report: {e}", file=sys.stderr)
                return 1
    except (OSError, ValueError) as e:
        print(f"rmgen report: {e}", file=sys.stderr)
        return 1
    print(f"rmgen report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
