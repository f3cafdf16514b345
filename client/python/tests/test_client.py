"""The Python client against a real coordinator and agent (conftest.py)."""
import pandas as pd
import pytest

import rmgen
from rmgen import Client


def test_plan_is_a_dry_run(alice, study_file):
    plan = alice.plan(study_file)
    assert len(plan) == 9
    assert list(plan["name"][:3]) == ["pyclient/tiny/sft", "pyclient/tiny/exrm/seed0/train",
                                      "pyclient/tiny/exrm/seed0/eval"]
    assert list(plan["kind"][:3]) == ["sft", "reward", "eval"]
    assert sorted(plan["kind"]) == sorted(["sft"] + ["reward", "dpo"] * 2 + ["eval"] * 4)
    assert list(plan["id"]) == [f"#{k}" for k in range(9)]
    assert plan.loc[1, "deps"] == ["#0"] and plan.loc[2, "deps"] == ["#1"]
    # The resolved spec: the study's learning rate and the defaults filled in.
    spec = plan.loc[1, "spec"]
    assert spec["train"]["learning_rate"] == pytest.approx(5e-4)
    assert spec["kind"] == "reward"
    assert (plan["state"] == "PENDING").all()
    # Nothing was stored.
    assert "pyclient" not in set(alice.studies().get("name", pd.Series(dtype=str)))


def test_plan_names_the_bad_field(alice, study_file):
    bad = study_file.read_text().replace("seeds: [0, 1]", "seeds: [zero, 1]")
    with pytest.raises(rmgen.InvalidArgument) as e:
        alice.plan(bad, source_name="bad.yaml")
    assert e.value.details.startswith("bad.yaml:7: field 'seeds[0]'"), e.value.details


def test_watch_sees_every_job_run_and_succeed(finished):
    study, updates, _ = finished
    states = {}
    for u in updates:
        states.setdefault(u.job.name, []).append(u.state)
    assert len(states) == 9, states.keys()
    for name, seen in states.items():
        assert seen[-1] == "SUCCEEDED", (name, seen)
        # The stream follows each job from before its end (a short job may pass RUNNING
        # between two reads of the watcher; the first job is seen live).
        assert len(seen) >= 2 and seen[0] != "SUCCEEDED", (name, seen)
    assert any("RUNNING" in seen for seen in states.values()), states
    # Training progress events arrive with the loss; the final metrics with the accuracy.
    losses = [e["loss"] for u in updates for e in u.events if "loss" in e]
    assert losses and all(x > 0 for x in losses)
    evals = [u.metrics for u in updates if u.job.kind == "eval" and u.metrics]
    assert len(evals) == 4


def test_status_and_jobs(alice, finished):
    study, _, rid = finished
    jobs = alice.status(study.id)
    assert len(jobs) == 9 and (jobs["state"] == "SUCCEEDED").all()
    assert set(jobs["method"].dropna()) == {"exrm", "dpo"}
    assert set(jobs["worker"]) == {""}  # no worker holds a final job
    s = alice.study(study.id)
    assert s.job_states["SUCCEEDED"] == 9 and s.jobs_total == 9
    assert study.id in set(alice.studies()["id"])
    # The same request id gives the same study back, planned once.
    again = alice.submit_study(alice.study(study.id).source, request_id=rid)
    assert again.id == study.id


def test_results_long_form(alice, finished):
    study, _, _ = finished
    df = alice.results(study.id)
    assert {"study", "model", "reward_model", "eval_set", "shift", "seeds", "mean", "std",
            "n", "ties", "acc_tie_half"} <= set(df.columns)
    assert set(df["reward_model"]) == {"EXRM", "DPORM"}
    per_set = df[~df["eval_set"].str.startswith("(")]
    assert set(per_set["eval_set"]) == {"synth-id:validation", "synth-prompt-shift",
                                        "synth-response-shift"}
    assert ((per_set["mean"] >= 0) & (per_set["mean"] <= 1)).all()
    assert (per_set["seeds"] == 2).all() and per_set["std"].notna().all()
    assert (per_set["n"] == 100).all()
    # The long form agrees with the JSON report and the per-seed frame.
    report = alice.results_json(study.id)
    seeds = alice.results_per_seed(study.id)
    assert len(seeds) == 4 and set(seeds["seed"]) == {0, 1}
    for rm, g in seeds.groupby("reward_model"):
        mean_id = df[(df["reward_model"] == rm) & (df["eval_set"] == "(mean ID)")]
        assert mean_id["mean"].iloc[0] == pytest.approx(g["id"].mean(), abs=1e-6)
        assert mean_id["std"].iloc[0] == pytest.approx(g["id"].std(ddof=1), abs=1e-6)
    assert report["runs"] == {"finished": 4, "expected": 4}
    assert "Table 7" in alice.results_table(study.id)


def test_logs(alice, finished):
    study, _, _ = finished
    jobs = alice.jobs(study.id)
    train = jobs[jobs["name"] == "pyclient/tiny/exrm/seed0/train"]["id"].iloc[0]
    logs = alice.logs(train)
    assert "loss" in logs.events.columns and logs.events["loss"].notna().any()
    assert list(logs.events["seq"]) == sorted(logs.events["seq"])
    assert logs.log_path.endswith("attempt-1.log")
    assert logs.log_lines  # the coordinator shares the output root here


def test_typed_errors(cluster, alice, finished, monkeypatch):
    monkeypatch.delenv("RMGEN_TOKEN", raising=False)
    monkeypatch.delenv("RMGEN_TOKEN_FILE", raising=False)
    monkeypatch.setenv("HOME", "/nonexistent")
    with pytest.raises(rmgen.NotFound):
        alice.study("s999")
    with Client(cluster.address, token="not-a-token") as nobody:
        with pytest.raises(rmgen.Unauthenticated):
            nobody.studies()
    with Client(cluster.address) as anonymous:
        with pytest.raises(rmgen.Unauthenticated):
            anonymous.studies()
    with pytest.raises(rmgen.PermissionDenied):
        alice.drain("py-worker")
    with Client(cluster.address, token_file=cluster.token_file("other")) as bob:
        with pytest.raises((rmgen.NotFound, rmgen.PermissionDenied)):
            bob.study(finished[0].id)
    with Client("127.0.0.1:1", token="x", timeout=2) as dead:
        with pytest.raises((rmgen.Unavailable, rmgen.DeadlineExceeded)):
            dead.studies()


def test_operator_sees_workers_and_drains(ops):
    w = ops.workers()
    row = w[w["id"] == "py-worker"].iloc[0]
    assert row["slots"] == 2 and row["alive"] and row["labels"] == {"pool": "cpu"}
    assert ops.drain("py-worker").draining
    assert not ops.drain("py-worker", undrain=True).draining


def test_cancel(alice, study_file):
    # Another seed and SFT recipe: nothing of the finished study is reused.
    text = (study_file.read_text().replace("name: pyclient", "name: pyclient-cancel")
            .replace("seeds: [0, 1]", "seeds: [5, 6]").replace("1.0e-3", "2.0e-3"))
    s = alice.submit_study(text)
    cancelled = alice.cancel(s.id)
    assert cancelled.cancelled
    final = alice.wait(s.id, timeout=60)
    assert final.job_states.get("CANCELLED", 0) >= 1
    assert final.job_states.get("SUCCEEDED", 0) + final.job_states.get("CANCELLED", 0) == 9
    with pytest.raises(ValueError):
        alice.cancel()


def test_connection_resolves_like_the_cli(tmp_path, monkeypatch):
    from rmgen.client import resolve_connection

    for var in ("RMGEN_COORDINATOR", "RMGEN_TOKEN", "RMGEN_TOKEN_FILE", "RMGEN_TLS_CA",
                "RMGEN_TLS_CERT", "RMGEN_TLS_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_connection() == {"address": "127.0.0.1:7070", "token": None,
                                    "root_certificates": None, "certificate_chain": None,
                                    "private_key": None}
    conf = tmp_path / ".config" / "rmgen"
    conf.mkdir(parents=True)
    (conf / "config.yaml").write_text("coordinator: c.example:9\ntoken: from-config\n"
                                      "tls_ca: /etc/ca.pem\n")
    r = resolve_connection()
    assert (r["address"], r["token"], r["root_certificates"]) == ("c.example:9", "from-config",
                                                                  "/etc/ca.pem")
    (tmp_path / "tok").write_text("  from-file \nsecond line\n")
    monkeypatch.setenv("RMGEN_TOKEN_FILE", str(tmp_path / "tok"))
    monkeypatch.setenv("RMGEN_COORDINATOR", "env:1")
    r = resolve_connection()
    assert (r["address"], r["token"]) == ("env:1", "from-file")
    monkeypatch.setenv("RMGEN_TOKEN", "from-env")  # wins over RMGEN_TOKEN_FILE, as in the CLI
    assert resolve_connection()["token"] == "from-env"
    assert resolve_connection("arg:2", token="from-arg")["address"] == "arg:2"
    assert resolve_connection(token_file=str(tmp_path / "tok"))["token"] == "from-file"
    monkeypatch.setenv("RMGEN_TOKEN", "")  # set but empty: still wins, as in the CLI
    assert resolve_connection()["token"] is None
    monkeypatch.delenv("RMGEN_TOKEN")
    monkeypatch.delenv("RMGEN_TOKEN_FILE")
    (conf / "config.yaml").write_text("token: 000123\n")  # kept as written
    assert resolve_connection()["token"] == "000123"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="no token"):
        resolve_connection(token_file=str(tmp_path / "empty"))
