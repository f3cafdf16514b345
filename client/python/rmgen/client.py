"""rmgen's Python client: the coordinator's gRPC API (proto/rmgen/v1/rmgen.proto) with
pandas DataFrames for lists and results.

    from rmgen import Client
    c = Client("127.0.0.1:7070", token_file="~/.config/rmgen/token")
    study = c.submit_study("configs/studies/demo.yaml")
    for u in c.watch(study.id):
        print(u.job.name, u.state, u.events[-1:])
    df = c.results(study.id)            # long form: one row per (run group, eval set)
"""
from __future__ import annotations

import io
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import grpc
import pandas as pd
from google.protobuf import json_format

from . import errors
from .v1 import rmgen_pb2 as pb
from .v1 import rmgen_pb2_grpc as pb_grpc

FINAL_STATES = ("SUCCEEDED", "FAILED", "CANCELLED")
DEFAULT_ADDRESS = "127.0.0.1:7070"  # the CLI's


def _plain(value: Any) -> Any:
    """A protobuf Struct's values as Python ones; whole numbers become ints."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def struct_to_dict(s) -> Dict[str, Any]:
    return _plain(json_format.MessageToDict(s)) if s is not None else {}


def state_name(state: int) -> str:
    return pb.JobState.Name(state)


@dataclass
class Update:
    """One change seen by `watch`: the job as it is now, its new events, and its final
    metrics when it succeeded."""

    job: Any  # rmgen.v1.Job
    events: List[Dict[str, Any]] = field(default_factory=list)
    metrics: Dict[str, Any] = field(default_factory=dict)

    @property
    def state(self) -> str:
        return state_name(self.job.state)


@dataclass
class Logs:
    """A job's progress events (a DataFrame, one row per event), and the latest attempt's
    log: its path and last lines (when the coordinator can read them), and the tail of a
    failed attempt's log."""

    events: pd.DataFrame
    log_path: str
    log_lines: List[str]
    log_tail: List[str]


def _token_from_file(path: str) -> str:
    lines = Path(path).expanduser().read_text().splitlines()
    token = lines[0].strip() if lines else ""
    if not token:
        raise ValueError(f"{path}: the first line holds no token")
    return token


def _config_file() -> Dict[str, str]:
    """~/.config/rmgen/config.yaml, as the CLI reads it (coordinator, token, tls_*): values
    as written (a token of digits keeps its leading zeros)."""
    path = Path.home() / ".config" / "rmgen" / "config.yaml"
    if not path.is_file():
        return {}
    try:
        import yaml

        doc = yaml.load(path.read_text(), Loader=yaml.BaseLoader) or {}
    except Exception:  # the CLI ignores a broken file too (and says so)
        return {}
    return {k: str(doc[k]) for k in ("coordinator", "token", "tls_ca", "tls_cert", "tls_key")
            if isinstance(doc, dict) and doc.get(k) is not None}


def resolve_connection(address=None, token=None, token_file=None, root_certificates=None,
                       certificate_chain=None, private_key=None) -> Dict[str, Any]:
    """The connection as the `rmgen` CLI resolves it: arguments first, then RMGEN_COORDINATOR,
    RMGEN_TOKEN (else RMGEN_TOKEN_FILE), RMGEN_TLS_CA / _CERT / _KEY, then
    ~/.config/rmgen/config.yaml, then 127.0.0.1:7070 without a token."""
    conf = _config_file()
    env = os.environ

    def pick(arg, var, key):  # a variable that is set wins, even empty (as in the CLI)
        if arg is not None:
            return arg
        return env[var] if var in env else conf.get(key)

    if token is None and token_file is not None:
        token = _token_from_file(token_file)
    if token is None and "RMGEN_TOKEN" not in env and env.get("RMGEN_TOKEN_FILE"):
        token = _token_from_file(env["RMGEN_TOKEN_FILE"])
    return {"address": pick(address, "RMGEN_COORDINATOR", "coordinator") or DEFAULT_ADDRESS,
            "token": pick(token, "RMGEN_TOKEN", "token") or None,
            "root_certificates": pick(root_certificates, "RMGEN_TLS_CA", "tls_ca"),
            "certificate_chain": pick(certificate_chain, "RMGEN_TLS_CERT", "tls_cert"),
            "private_key": pick(private_key, "RMGEN_TLS_KEY", "tls_key")}


class Client:
    """A connection to an rmgen coordinator, resolved as the `rmgen` CLI does (see
    resolve_connection): address "host:port"; token or token_file (the token on its first
    line); tls=True, or root_certificates (the coordinator's CA), uses TLS;
    certificate_chain and private_key add a client certificate (mutual TLS). The PEM
    arguments are bytes or paths. timeout: seconds for each unary call (not for watch).
    """

    def __init__(self, address: Optional[str] = None, token: Optional[str] = None, *,
                 token_file: Optional[str] = None, tls: bool = False,
                 root_certificates: Union[bytes, str, None] = None,
                 certificate_chain: Union[bytes, str, None] = None,
                 private_key: Union[bytes, str, None] = None, timeout: float = 60.0):
        conn = resolve_connection(address, token, token_file, root_certificates,
                                  certificate_chain, private_key)
        self.address = conn["address"]
        self._token = conn["token"]
        self.timeout = timeout
        options = [("grpc.max_receive_message_length", 8 << 20)]
        if tls or conn["root_certificates"] or conn["certificate_chain"]:
            def pem(x):
                if x is None or isinstance(x, bytes):
                    return x
                return Path(x).expanduser().read_bytes()

            creds = grpc.ssl_channel_credentials(pem(conn["root_certificates"]),
                                                 pem(conn["private_key"]),
                                                 pem(conn["certificate_chain"]))
            self._channel = grpc.secure_channel(self.address, creds, options)
        else:
            self._channel = grpc.insecure_channel(self.address, options)
        self._stub = pb_grpc.CoordinatorStub(self._channel)

    # -- plumbing -----------------------------------------------------------------------
    def close(self) -> None:
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _metadata(self):
        return [("authorization", f"Bearer {self._token}")] if self._token else []

    def _call(self, method: str, request):
        try:
            return getattr(self._stub, method)(request, timeout=self.timeout,
                                               metadata=self._metadata())
        except grpc.RpcError as e:
            raise errors.from_rpc_error(e, method) from None

    def _stream(self, method: str, request):
        try:
            for item in getattr(self._stub, method)(request, metadata=self._metadata()):
                yield item
        except grpc.RpcError as e:
            raise errors.from_rpc_error(e, method) from None

    # -- studies ------------------------------------------------------------------------
    @staticmethod
    def _study_text(study: Union[str, os.PathLike]) -> tuple:
        """(text, source name) of a study given as a path or as YAML text."""
        if isinstance(study, os.PathLike) or (isinstance(study, str) and "\n" not in study
                                              and Path(study).expanduser().is_file()):
            path = Path(study).expanduser()
            return path.read_text(), path.name
        if isinstance(study, str) and "\n" not in study and study.endswith((".yaml", ".yml")):
            raise FileNotFoundError(f"study file {study} not found")
        return str(study), "<python>"

    def submit_study(self, study: Union[str, os.PathLike], *, request_id: Optional[str] = None,
                     source_name: Optional[str] = None):
        """Submits a study (a path to its YAML file, or the YAML text). Returns the Study.
        The same request_id submits once: a retry gets the first study back."""
        text, name = self._study_text(study)
        req = pb.SubmitStudyRequest(study_yaml=text, source_name=source_name or name,
                                    request_id=request_id or uuid.uuid4().hex)
        return self._call("SubmitStudy", req).study

    def plan(self, study: Union[str, os.PathLike], *,
             source_name: Optional[str] = None) -> pd.DataFrame:
        """The jobs a study would run, without submitting it: one row per job with its
        name, kind, ranks, dependencies (as names), labels and resolved spec."""
        text, name = self._study_text(study)
        req = pb.SubmitStudyRequest(study_yaml=text, source_name=source_name or name,
                                    dry_run=True)
        resp = self._call("SubmitStudy", req)
        return _jobs_frame(resp.jobs, with_spec=True)

    def study(self, study_id: str):
        """The Study: its name, setting, owner and job counts by state."""
        return self._call("GetStudy", pb.GetStudyRequest(id=study_id))

    def studies(self, all_users: bool = False) -> pd.DataFrame:
        """Every study of the caller (an operator: of everyone with all_users=True)."""
        rows, token = [], ""
        while True:
            r = self._call("ListStudies", pb.ListStudiesRequest(all_users=all_users,
                                                               page_token=token))
            for s in r.studies:
                rows.append({"id": s.id, "name": s.name, "setting": s.setting, "user": s.user,
                             "created": pd.to_datetime(s.created_ms, unit="ms"),
                             "cancelled": s.cancelled, "jobs_total": s.jobs_total,
                             **{f"jobs_{k.lower()}": v for k, v in s.job_states.items()}})
            token = r.next_page_token
            if not token:
                break
        return pd.DataFrame(rows)

    def status(self, study_id: Optional[str] = None, *, all_users: bool = False) -> pd.DataFrame:
        """A study's jobs (one row each: name, state, reason, attempt, worker, labels), or
        without a study id the caller's studies."""
        if study_id is None:
            return self.studies(all_users=all_users)
        return self.jobs(study_id=study_id, all_users=all_users)

    def jobs(self, study_id: str = "", *, state: str = "", kind: str = "",
             all_users: bool = False) -> pd.DataFrame:
        jobs, token = [], ""
        st = pb.JobState.Value(state) if state else 0
        while True:
            r = self._call("ListJobs", pb.ListJobsRequest(study_id=study_id, state=st, kind=kind,
                                                          page_token=token,
                                                          all_users=all_users))
            jobs.extend(r.jobs)
            token = r.next_page_token
            if not token:
                break
        return _jobs_frame(jobs)

    def job(self, job_id: str):
        """The Job, with its resolved spec and every attempt."""
        return self._call("GetJob", pb.GetJobRequest(id=job_id))

    def cancel(self, study_id: Optional[str] = None, *, job_id: Optional[str] = None):
        """Cancels a study (every job not yet final) or one job."""
        if (study_id is None) == (job_id is None):
            raise ValueError("cancel: give a study id or job_id=, not both")
        if job_id is not None:
            return self._call("CancelJob", pb.CancelJobRequest(id=job_id))
        return self._call("CancelStudy", pb.CancelStudyRequest(id=study_id))

    # -- progress -----------------------------------------------------------------------
    def watch(self, study_id: Optional[str] = None, *, job_id: Optional[str] = None,
              after_seq: int = 0) -> Iterator[Update]:
        """Updates until the study (every job) or the job is final."""
        if (study_id is None) == (job_id is None):
            raise ValueError("watch: give a study id or job_id=, not both")
        if job_id is not None:
            stream = self._stream("WatchJob", pb.WatchJobRequest(id=job_id, after_seq=after_seq))
        else:
            stream = self._stream("WatchStudy", pb.WatchStudyRequest(id=study_id))
        for u in stream:
            yield Update(job=u.job, events=[_event(e) for e in u.events],
                         metrics=struct_to_dict(u.metrics) if u.HasField("metrics") else {})

    def wait(self, study_id: str, timeout: Optional[float] = None):
        """Blocks until every job of the study is final; returns the Study."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            s = self.study(study_id)
            if sum(s.job_states.get(k, 0) for k in FINAL_STATES) >= s.jobs_total:
                return s
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"study {study_id} not final after {timeout} s")
            time.sleep(0.5)

    def logs(self, job_id: str) -> Logs:
        """Every progress event of the job, and the latest attempt's log lines."""
        events, after = [], 0
        while True:
            r = self._call("GetLogs", pb.GetLogsRequest(job_id=job_id, after_seq=after))
            events.extend(_event(e) for e in r.events)
            tail = list(r.log_tail)
            if r.next_after_seq == 0:
                return Logs(events=pd.DataFrame(events), log_path=r.log_path,
                            log_lines=list(r.log_lines), log_tail=tail)
            after = r.next_after_seq

    # -- results ------------------------------------------------------------------------
    def _results(self, study_ids: Sequence[str], tag: str, fmt: str):
        ids = list(study_ids)
        if not ids and not tag:
            raise ValueError("results: give study ids or tag=")
        req = pb.GetResultsRequest(study_id=ids[0] if ids else "", study_ids=ids[1:], tag=tag,
                                   format=fmt)
        return self._call("GetResults", req)

    def results(self, *study_ids: str, tag: str = "") -> pd.DataFrame:
        """The results tables in long form: one row per (study, model, reward model, eval
        set), with the mean and sample std over seeds, and n / ties / acc_tie_half; the
        rows `(mean ID)` and `(mean OOD)` are the per-run means over those sets."""
        csv = self._results(study_ids, tag, "csv").csv
        # An empty cell (a statistic over no seeds yet, a one-seed std) reads as NaN.
        return pd.read_csv(io.StringIO(csv), keep_default_na=False,
                           na_values={"mean": [""], "std": [""], "n": [""], "ties": [""],
                                      "acc_tie_half": [""]})

    def results_per_seed(self, *study_ids: str, tag: str = "") -> pd.DataFrame:
        """One row per run: study, setting, train, model, reward model, seed, ID and mean
        OOD accuracy (what Figure 3b and the ID-vs-OOD scatter are made of)."""
        return per_seed_frame(self.results_json(*study_ids, tag=tag))

    def results_json(self, *study_ids: str, tag: str = "") -> Dict[str, Any]:
        """The coordinator's full results report (coordinator/results.h ToJson)."""
        return struct_to_dict(self._results(study_ids, tag, "json").results)

    def results_table(self, *study_ids: str, tag: str = "", markdown: bool = False) -> str:
        r = self._results(study_ids, tag, "md" if markdown else "table")
        return r.markdown if markdown else r.table

    # -- operators ----------------------------------------------------------------------
    def workers(self) -> pd.DataFrame:
        rows, token = [], ""
        while True:
            r = self._call("ListWorkers", pb.ListWorkersRequest(page_token=token))
            for w in r.workers:
                rows.append({"id": w.id, "host": w.host, "slots": w.slots,
                             "free_slots": w.free_slots, "alive": w.alive,
                             "draining": w.draining, "jobs": list(w.jobs),
                             "labels": struct_to_dict(w.labels),
                             "last_heartbeat": pd.to_datetime(w.last_heartbeat_ms, unit="ms")})
            token = r.next_page_token
            if not token:
                break
        return pd.DataFrame(rows)

    def drain(self, worker_id: str, undrain: bool = False):
        """Stops (or, undrain=True, resumes) handing jobs to a worker (operators only)."""
        return self._call("DrainWorker", pb.DrainWorkerRequest(id=worker_id, undrain=undrain))


def _event(e) -> Dict[str, Any]:
    return {"job_id": e.job_id, "attempt": e.attempt, "seq": e.seq, **struct_to_dict(e.body)}


def _jobs_frame(jobs, with_spec: bool = False) -> pd.DataFrame:
    cols = ["id", "name", "kind", "state", "reason", "attempt", "max_attempts", "worker",
            "ranks", "priority", "deps", "model", "method", "seed", "role", "created",
            "updated"]
    rows = []
    for j in jobs:
        labels = struct_to_dict(j.labels)
        row = {"id": j.id, "name": j.name, "kind": j.kind, "state": state_name(j.state),
               "reason": j.reason, "attempt": j.attempt, "max_attempts": j.max_attempts,
               "worker": j.worker, "ranks": j.ranks, "priority": j.priority,
               "deps": list(j.deps), "model": labels.get("model"),
               "method": labels.get("method"), "seed": labels.get("seed"),
               "role": labels.get("role"),
               "created": pd.to_datetime(j.created_ms, unit="ms") if j.created_ms else pd.NaT,
               "updated": pd.to_datetime(j.updated_ms, unit="ms") if j.updated_ms else pd.NaT}
        if with_spec:
            row["spec"] = struct_to_dict(j.spec)
        rows.append(row)
    return pd.DataFrame(rows, columns=cols + (["spec"] if with_spec else []))


def per_seed_frame(report: Dict[str, Any]) -> pd.DataFrame:
    rows = []
    for r in report.get("rows", []):
        for seed, v in sorted(r.get("per_seed", {}).items(), key=lambda kv: int(kv[0])):
            rows.append({"study": r.get("study"), "setting": r.get("setting"),
                         "train": r.get("train"), "model": r["model"],
                         "reward_model": r["reward_model"], "seed": int(seed),
                         "id": v.get("id"), "ood": v.get("ood")})
    return pd.DataFrame(rows, columns=["study", "setting", "train", "model", "reward_model",
                                       "seed", "id", "ood"])
