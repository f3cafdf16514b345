"""Reports with figures (rmgen.report) from a finished study on the real coordinator."""
import json
import os
import subprocess
import sys

import pytest

from rmgen import report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIGURES = ["fig3b_exrm_beats_dporm", "id_vs_ood_per_run", "per_eval_set", "learning_curves"]


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_report_from_the_coordinator(cluster, finished, tmp_path):
    study = finished[0]
    out = tmp_path / "report"
    env = dict(os.environ, RMGEN_COORDINATOR=cluster.address,
               RMGEN_TOKEN_FILE=cluster.token_file("submitter"))
    env.pop("RMGEN_TOKEN", None)
    r = subprocess.run([sys.executable, "-m", "rmgen.report", study.id, "--out", str(out)],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    for name in FIGURES:
        w, h = _png_size(out / "figures" / f"{name}.png")
        assert w >= 400 and h >= 300, (name, w, h)
        svg = (out / "figures" / f"{name}.svg").read_text()
        assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    page = (out / "index.html").read_text()
    # Self-contained: every figure inline, no external script, style or image.
    assert page.count("<svg") == len(FIGURES)
    assert "src=\"http" not in page and "href=\"http" not in page and "<script" not in page
    assert "EXRM" in page and "DPORM" in page and "synth-prompt-shift" in page
    saved = json.loads((out / "results.json").read_text())
    assert saved["runs"] == {"finished": 4, "expected": 4}
    # The Figure 3b bars say what the results say.
    wins = saved["exrm_beats_dporm"]["id"]
    assert f"{wins['exrm_wins']}/{wins['runs']}" in (out / "figures" /
                                                      "fig3b_exrm_beats_dporm.svg").read_text()
    assert (out / "results.csv").read_text().count("\n") > 6
    assert (out / "per_seed.csv").read_text().count("\n") == 5


def test_learning_curves_follow_the_events(alice, finished):
    curves = report.learning_curves(alice, [finished[0].id])
    methods = sorted(c["method"] for c in curves)
    assert methods == ["dpo", "dpo", "exrm", "exrm", "sft"], methods
    for c in curves:
        assert len(c["step"]) == len(c["loss"]) > 1
        assert c["step"] == sorted(c["step"])


def test_report_from_saved_json_and_bad_input(tmp_path, alice, finished):
    saved = tmp_path / "r.json"
    saved.write_text(json.dumps(alice.results_json(finished[0].id)))
    rc = report.main(["--from-json", str(saved), "--out", str(tmp_path / "offline")])
    assert rc == 0 and (tmp_path / "offline" / "figures" / "per_eval_set.png").is_file()
    assert not (tmp_path / "offline" / "figures" / "learning_curves.png").exists()
    (tmp_path / "broken.json").write_text("{not json")
    assert report.main(["--from-json", str(tmp_path / "broken.json"),
                        "--out", str(tmp_path / "x")]) == 1
    with pytest.raises(SystemExit):
        report.main(["--out", str(tmp_path / "y")])  # neither studies nor --tag


def test_rmgen_report_command(cluster, finished, tmp_path):
    """`rmgen report` (the C++ CLI) resolves the connection and runs rmgen.report; the
    token travels in the environment, not on the command line."""
    from conftest import BUILD

    out = tmp_path / "cli-report"
    env = dict(os.environ, RMGEN_PYTHON=sys.executable, RMGEN_COORDINATOR=cluster.address,
               RMGEN_TOKEN_FILE=cluster.token_file("submitter"))
    env.pop("RMGEN_TOKEN", None)
    r = subprocess.run([str(BUILD / "client" / "rmgen"), "report", finished[0].id, "--out",
                        str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (out / "index.html").is_file() and (out / "figures" / "learning_curves.png").is_file()
    env["RMGEN_TOKEN_FILE"] = cluster.token_file("other")  # bob may not read alice's study
    r = subprocess.run([str(BUILD / "client" / "rmgen"), "report", finished[0].id, "--out",
                        str(tmp_path / "denied")], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 1 and "rmgen report:" in r.stderr, r.stderr
    env["RMGEN_PYTHON"] = "/nonexistent/python"
    r = subprocess.run([str(BUILD / "client" / "rmgen"), "report", "s1", "--out",
                        str(tmp_path / "x")], env=env, capture_output=True, text=True)
    assert r.returncode == 127 and "RMGEN_PYTHON" in r.stderr


def test_report_of_a_study_without_finished_runs(tmp_path):
    empty = {"rows": [], "studies": [{"study": "x"}], "runs": {"finished": 0, "expected": 4},
             "exrm_beats_dporm": {"id": {"runs": 0, "exrm_wins": 0},
                                  "ood": {"runs": 0, "exrm_wins": 0}}}
    (tmp_path / "r.json").write_text(json.dumps(empty))
    assert report.main(["--from-json", str(tmp_path / "r.json"), "--out", str(tmp_path / "o")]) == 0
    page = " ".join((tmp_path / "o" / "index.html").read_text().split())
    assert "Runs finished: 0 of 4" in page
