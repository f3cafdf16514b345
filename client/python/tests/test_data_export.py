"""`python -m rmgen.data export`: the paper-mini suite's sources (rmgen data synth, in each
source's schema) written as the hubs ship them (Parquet, the hubs' folder layouts, shards
and decoy configs), exported back to JSONL.gz, and read by `rmgen data stats` exactly as the
originals are."""
import gzip
import json
import shutil
import subprocess
import sys

import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from conftest import BUILD, _binary  # noqa: E402
from rmgen import data  # noqa: E402

# catalog file -> [(Parquet file in the hub's layout, which rows: (start, stop) fraction)]
HUB_LAYOUT = {
    "ultrafeedback_binarized/train_prefs.jsonl.gz":
        [("ultrafeedback_binarized/data/train_prefs-00000-of-00001.parquet", (0, 1))],
    "ultrafeedback_binarized/test_prefs.jsonl.gz":
        [("ultrafeedback_binarized/data/test_prefs-00000-of-00001.parquet", (0, 1))],
    "chatbot_arena_conversations/train.jsonl.gz":
        [("chatbot_arena_conversations/data/train-00000-of-00001-cced8514c7ed782a.parquet",
          (0, 1))],
    "hh-rlhf/train.jsonl.gz": [("hh-rlhf/default/train/0000.parquet", (0, 1))],
    "hh-rlhf/test.jsonl.gz": [("hh-rlhf/default/test/0000.parquet", (0, 1))],
    # Two shards, concatenated in order; the folder's case differs from the catalog's.
    "nectar/nectar.jsonl.gz": [("Nectar/data/train-00000-of-00002.parquet", (0, 0.5)),
                               ("Nectar/data/train-00001-of-00002.parquet", (0.5, 1))],
    "webgpt_comparisons/comparisons.jsonl.gz":
        [("webgpt_comparisons/default/train/0000.parquet", (0, 1))],
    "summarize_from_feedback/comparisons.jsonl.gz":
        [("summarize_from_feedback/comparisons/train/0000.parquet", (0, 0.6)),
         ("summarize_from_feedback/comparisons/validation/0000.parquet", (0.6, 1))],
    "reward-bench/filtered.jsonl.gz":
        [("reward-bench/data/filtered-00000-of-00001.parquet", (0, 1))],
}
# Files of other configs and splits in the same folders, which must not be taken.
DECOYS = ["ultrafeedback_binarized/data/train_sft-00000-of-00001.parquet",
          "summarize_from_feedback/axis/test/0000.parquet",
          "reward-bench/data/raw-00000-of-00001.parquet"]


def _rows(path):
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """(original suite folder, hub-layout Parquet folder)."""
    rmgen_bin = _binary("client", "rmgen")
    root = tmp_path_factory.mktemp("export")
    orig = root / "orig"
    subprocess.run([rmgen_bin, "data", "synth", "--profile", "paper-mini", "--out", str(orig),
                    "--rows", "60", "--test-rows", "30"], check=True, capture_output=True)
    hub = root / "hub"
    for target, shards in HUB_LAYOUT.items():
        rows = _rows(orig / target)
        for rel, (a, b) in shards:
            part = rows[int(a * len(rows)):int(b * len(rows))]
            (hub / rel).parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(part), hub / rel)
    for rel in DECOYS:
        (hub / rel).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"prompt": ["decoy"], "other": [1]}), hub / rel)
    return orig, hub


def _stats(catalog, data_root, dataset):
    r = subprocess.run([str(BUILD / "client" / "rmgen"), "data", "stats", "--catalog",
                        str(catalog), "--data-root", str(data_root), "--dataset", dataset,
                        "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


DATASETS = ["ultra", "ultra:test", "arena", "arena:test", "hh", "hh:test", "nectar",
            "nectar:test", "webgpt", "webgpt:test", "sum-reddit", "sum-reddit:test",
            "sum-cnn:test", "sum-dailymail:test", "rewardbench:test"]


def test_export_reads_back_as_the_originals(suite, tmp_path):
    orig, hub = suite
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "rmgen.data", "export", "--catalog",
                        str(orig / "datasets.yaml"), "--from", str(hub), "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "9 file(s) written" in r.stdout
    for target in HUB_LAYOUT:
        got, want = _rows(out / target), _rows(orig / target)
        assert len(got) == len(want), target
        # Field for field; Parquet's one schema per file adds absent keys as null.
        for g, w in zip(got, want):
            assert {k: v for k, v in g.items() if k in w} == w, target
    for name in DATASETS:
        assert _stats(orig / "datasets.yaml", out, name) == \
            _stats(orig / "datasets.yaml", orig, name), name
    # Deterministic: the same bytes again.
    again = tmp_path / "again"
    data.main(["export", "--catalog", str(orig / "datasets.yaml"), "--from", str(hub),
               "--out", str(again)])
    for target in HUB_LAYOUT:
        assert (again / target).read_bytes() == (out / target).read_bytes(), target


def test_export_errors_name_the_file(suite, tmp_path, capsys):
    orig, hub = suite
    broken = tmp_path / "hub"
    shutil.copytree(hub, broken)
    bad = broken / "hh-rlhf/default/test/0000.parquet"
    bad.write_bytes(b"PAR1 not really")
    rc = data.main(["export", "--catalog", str(orig / "datasets.yaml"), "--from", str(broken),
                    "--out", str(tmp_path / "out"), "--only", "hh"])
    err = capsys.readouterr().err
    assert rc == 1 and str(bad) in err and "hh:test" in err, err
    assert not (tmp_path / "out/hh-rlhf/test.jsonl.gz").exists()
    assert (tmp_path / "out/hh-rlhf/train.jsonl.gz").exists()  # the good one still written
    # A folder whose files are named for neither split.
    shutil.rmtree(broken / "ultrafeedback_binarized/data")
    (broken / "ultrafeedback_binarized/x").mkdir()
    pq.write_table(pa.table({"a": [1]}), broken / "ultrafeedback_binarized/x/other.parquet")
    rc = data.main(["export", "--catalog", str(orig / "datasets.yaml"), "--from", str(broken),
                    "--out", str(tmp_path / "out2"), "--only", "ultra"])
    err = capsys.readouterr().err
    assert rc == 1 and "no Parquet file named for 'train_prefs'" in err, err
    assert data.main(["export", "--catalog", str(orig / "datasets.yaml"), "--from",
                      str(broken), "--out", str(tmp_path / "o3"), "--only", "nope"]) == 1
    assert "no dataset nope" in capsys.readouterr().err
    (tmp_path / "escape.yaml").write_text(
        "datasets:\n  x: {adapter: pairs, splits: {test: ../../etc/x.jsonl.gz}}\n")
    assert data.main(["export", "--catalog", str(tmp_path / "escape.yaml"), "--from", str(hub),
                      "--out", str(tmp_path / "o5")]) == 1
    assert "no '..'" in capsys.readouterr().err
    # --only: that entry's files, each from its own shards, and nothing else.
    rc = data.main(["export", "--catalog", str(orig / "datasets.yaml"), "--from", str(hub),
                    "--out", str(tmp_path / "o6"), "--only", "ultra"])
    assert rc == 0
    assert len(_rows(tmp_path / "o6/ultrafeedback_binarized/train_prefs.jsonl.gz")) == \
        len(_rows(orig / "ultrafeedback_binarized/train_prefs.jsonl.gz"))
    assert sorted(p.name for p in (tmp_path / "o6").iterdir()) == ["ultrafeedback_binarized"]
    (tmp_path / "bad.yaml").write_text("datasets: [1, 2]\n")
    assert data.main(["export", "--catalog", str(tmp_path / "bad.yaml"), "--from", str(hub),
                      "--out", str(tmp_path / "o4")]) == 1
    assert "bad.yaml: expected a mapping" in capsys.readouterr().err
