"""Prometheus metrics of the coordinator (/metrics on its HTTP port) and of the agent
(--metrics): the text format checked by promtool (Debian's prometheus package) and by the
prometheus_client parser; values that follow what the cluster did; no data without a token."""
import shutil
import subprocess
import urllib.error
import urllib.request

import pytest

parser = pytest.importorskip("prometheus_client.parser")


def get(url, token=None):
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


def samples(text):
    out = {}
    for fam in parser.text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(ss, name, **labels):
    return ss.get((name, tuple(sorted(labels.items()))))


def promtool_ok(text):
    tool = shutil.which("promtool")
    if not tool:
        pytest.skip("promtool not installed (Debian: prometheus)")
    r = subprocess.run([tool, "check", "metrics"], input=text, capture_output=True, text=True)
    # promtool lints too: only problems that make the text unusable fail here.
    assert r.returncode == 0, r.stdout + r.stderr


def test_coordinator_metrics_need_an_operator(cluster):
    code, headers, body = get(cluster.http + "/metrics")
    assert code == 401 and "rmgen_" not in body
    assert headers["WWW-Authenticate"].startswith("Bearer")
    code, _, body = get(cluster.http + "/metrics", "wrong-token-0123456789")
    assert code == 401 and "rmgen_" not in body
    code, _, body = get(cluster.http + "/metrics", cluster.tokens["submitter"])
    assert code == 403 and "operator" in body
    assert get(cluster.http + "/healthz")[:3:2] == (200, "ok\n")


def test_coordinator_metrics_follow_the_study(cluster, finished):
    code, headers, text = get(cluster.http + "/metrics", cluster.tokens["operator"])
    assert code == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    promtool_ok(text)
    ss = samples(text)
    assert value(ss, "rmgen_jobs_finished_total", state="SUCCEEDED") >= 9
    for state in ("PENDING", "QUEUED", "ASSIGNED", "RUNNING"):
        assert value(ss, "rmgen_jobs", state=state) is not None
    assert value(ss, "rmgen_workers", state="alive") == 1
    assert value(ss, "rmgen_worker_slots", worker="py-worker") == 2
    assert value(ss, "rmgen_queue_wait_seconds_count") >= 9
    assert value(ss, "rmgen_scheduling_pass_seconds_count") >= 9
    assert value(ss, "rmgen_store_write_seconds_count") >= 27  # assigned, running, final x 9
    assert value(ss, "rmgen_rpc_duration_seconds_count", method="SubmitStudy", code="OK") >= 1
    assert value(ss, "rmgen_rpc_duration_seconds_count", method="Heartbeat", code="OK") >= 1
    # Histogram buckets are cumulative and end in the count.
    buckets = sorted((float(dict(k[1])["le"]), v) for k, v in ss.items()
                     if k[0] == "rmgen_store_write_seconds_bucket")
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)
    assert buckets[-1] == (float("inf"), value(ss, "rmgen_store_write_seconds_count"))


def test_a_failed_call_is_counted_by_code(cluster, alice):
    import rmgen

    with pytest.raises(rmgen.NotFound):
        alice.study("s424242")
    ss = samples(get(cluster.http + "/metrics", cluster.tokens["operator"])[2])
    assert value(ss, "rmgen_rpc_duration_seconds_count", method="GetStudy", code="NOT_FOUND") >= 1


def test_agent_metrics(cluster, finished):
    code, _, text = get(cluster.agent_metrics)
    assert code == 200
    promtool_ok(text)
    ss = samples(text)
    assert value(ss, "rmgen_agent_attempts_started_total") >= 9
    assert value(ss, "rmgen_agent_attempts_ended_total", outcome="succeeded") >= 9
    assert value(ss, "rmgen_agent_registrations_total") >= 1
    assert value(ss, "rmgen_agent_events_relayed_total") > 0
    assert value(ss, "rmgen_agent_slots") == 2
    assert value(ss, "rmgen_agent_relay_lag_seconds") is not None


def test_deploy_prometheus_config_and_grafana_dashboard(cluster, finished, tmp_path):
    """deploy/prometheus/prometheus.yml passes promtool (its token files stood in for), and
    every metric the Grafana dashboard queries is one the coordinator or an agent serves."""
    import json
    import re

    from conftest import REPO

    config = (REPO / "deploy/prometheus/prometheus.yml").read_text()
    for path in set(re.findall(r"credentials_file: (\S+)", config)):
        stand_in = tmp_path / path.strip("/").replace("/", "_")
        stand_in.write_text("token\n")
        config = config.replace(path, str(stand_in))
    (tmp_path / "prometheus.yml").write_text(config)
    tool = shutil.which("promtool")
    if not tool:
        pytest.skip("promtool not installed (Debian: prometheus)")
    r = subprocess.run([tool, "check", "config", str(tmp_path / "prometheus.yml")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    served = set()
    for text in (get(cluster.http + "/metrics", cluster.tokens["operator"])[2],
                 get(cluster.agent_metrics)[2]):
        served |= {fam.name for fam in parser.text_string_to_metric_families(text)}
    board = json.loads((REPO / "deploy/grafana/rmgen-dashboard.json").read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    assert len(exprs) >= 16
    used = {re.sub(r"_(bucket|count|sum|total)$", "", m)
            for e in exprs for m in re.findall(r"\brmgen_[a-z_]+", e)}
    served = {re.sub(r"_(total)$", "", n) for n in served}
    assert used <= served, used - served
