"""A real rmgen coordinator (tokens for a submitter, an operator and the workers) and a real
agent running rmgen-train ranks, over gRPC on loopback, in a temporary folder holding the
synthetic suite. RMGEN_BUILD_DIR names the CMake build folder (default: the repository's
build/)."""
import os
import secrets
import subprocess
import time
import uuid
from pathlib import Path

import pytest

import rmgen

# The repository (RMGEN_SOURCE_DIR when the tests run from a copy, as under ctest).
REPO = Path(os.environ.get("RMGEN_SOURCE_DIR") or Path(__file__).resolve().parents[3])
BUILD = Path(os.environ.get("RMGEN_BUILD_DIR", REPO / "build")).resolve()

# Two seeds of the demo study on 1 rank, short: 9 jobs (sft; per seed exrm and dpo, train
# and eval).
SMALL_STUDY = """\
name: pyclient
setting: demo
catalog: synth/datasets.yaml
models:
  - {name: tiny, config: synth/model.json, tokenizer: synth/tokenizer.model, template: zephyr}
methods: [exrm, dpo]
seeds: [0, 1]
train: synth-id:train
eval:
  id: [synth-id:validation]
  ood: [synth-prompt-shift, synth-response-shift]
sft: {epochs: 1, per_rank_batch_size: 8, learning_rate: 1.0e-3}
exrm: {epochs: 2, per_rank_batch_size: 8, learning_rate: 5.0e-4}
dpo: {epochs: 1, per_rank_batch_size: 8, learning_rate: 5.0e-4, beta: 0.1}
resources: {ranks: 1, threads: 1}
"""


def _binary(*parts):
    p = BUILD.joinpath(*parts)
    if not p.is_file():
        pytest.skip(f"{p} not built (set RMGEN_BUILD_DIR)")
    return str(p)


class Cluster:
    def __init__(self, work: Path):
        self.work = work
        self.procs = []
        self.tokens = {r: secrets.token_hex(16) for r in ("submitter", "operator", "worker",
                                                          "other")}
        self.rmgen = _binary("client", "rmgen")
        coordinator = _binary("coordinator", "rmgen-coordinator")
        agent = _binary("worker", "agent", "rmgen-worker")
        train = _binary("worker", "train", "rmgen-train")
        subprocess.run([self.rmgen, "data", "synth", "--out", str(work / "synth"),
                        "--train", "400", "--validation", "100", "--shifted", "100"],
                       check=True, capture_output=True)
        users = {"submitter": "alice", "operator": "ops", "worker": "workers", "other": "bob"}
        roles = {"submitter": "submitter", "operator": "operator", "worker": "worker",
                 "other": "submitter"}
        (work / "tokens.yaml").write_text("tokens:\n" + "".join(
            f"  - {{token: {self.tokens[k]}, user: {users[k]}, role: {roles[k]}}}\n"
            for k in self.tokens))
        for k, t in self.tokens.items():
            (work / f"{k}.token").write_text(t + "\n")
        log = open(work / "coordinator.log", "w")
        self.procs.append(subprocess.Popen(
            [coordinator, "--listen", "127.0.0.1:0", "--data-dir", str(work / "coord"),
             "--tokens", str(work / "tokens.yaml"), "--output-root", str(work / "jobs"),
             "--lease-ms", "10000", "--http", "127.0.0.1:0"], cwd=work, stdout=log,
            stderr=subprocess.STDOUT))
        self.port = self.http_port = None
        for _ in range(200):
            for line in (work / "coordinator.log").read_text().splitlines():
                if line.startswith("port "):
                    self.port = int(line.split()[1])
                if line.startswith("http port "):
                    self.http_port = int(line.split()[2])
            if self.port or self.procs[0].poll() is not None:
                break
            time.sleep(0.05)
        if not self.port:
            raise RuntimeError("the coordinator did not start: " +
                               (work / "coordinator.log").read_text())
        self.address = f"127.0.0.1:{self.port}"
        self.http = f"http://127.0.0.1:{self.http_port}"
        alog = open(work / "agent.log", "w")
        self.procs.append(subprocess.Popen(
            [agent, "--coordinator", self.address, "--token-file", str(work / "worker.token"),
             "--id", "py-worker", "--slots", "2", "--state-dir", str(work / "agent"),
             "--workdir", str(work), "--train-bin", train, "--label", "pool=cpu",
             "--metrics", "127.0.0.1:0"],
            cwd=work, stdout=alog, stderr=subprocess.STDOUT))
        self.agent_metrics = None
        for _ in range(200):
            for line in (work / "agent.log").read_text().splitlines():
                if "metrics on http://" in line:
                    self.agent_metrics = line.split("metrics on ")[1].strip()
            if self.agent_metrics or self.procs[1].poll() is not None:
                break
            time.sleep(0.05)
        if not self.agent_metrics:
            raise RuntimeError("the agent did not start: " + (work / "agent.log").read_text())

    def token_file(self, role):
        return str(self.work / f"{role}.token")

    def stop(self):
        for p in reversed(self.procs):
            p.terminate()
        for p in reversed(self.procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("rmgen-py"))
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="session")
def study_file(cluster):
    p = cluster.work / "pyclient.yaml"
    p.write_text(SMALL_STUDY)
    return p


@pytest.fixture(scope="session")
def alice(cluster):
    with rmgen.Client(cluster.address, token_file=cluster.token_file("submitter")) as c:
        yield c


@pytest.fixture(scope="session")
def ops(cluster):
    with rmgen.Client(cluster.address, token_file=cluster.token_file("operator")) as c:
        yield c


@pytest.fixture(scope="session")
def finished(alice, study_file):
    """The small study, submitted and watched to the end: (study, every update seen)."""
    rid = uuid.uuid4().hex
    study = alice.submit_study(study_file, request_id=rid)
    updates = list(alice.watch(study.id))
    return study, updates, rid


# One EXRM job long enough (tens of seconds on 2 cores, a step logged each step) to be
# watched while it runs: its SFT model is the small study's (reused when that one ran).
LONG_STUDY = SMALL_STUDY.replace("name: pyclient", "name: pylong").replace(
    "methods: [exrm, dpo]", "methods: [exrm]").replace("seeds: [0, 1]", "seeds: [7]").replace(
    "exrm: {epochs: 2,", "exrm: {epochs: 40,")
