"""The hub's files in: `python -m rmgen.data export --catalog configs/datasets.yaml --from DIR
--out DIR` converts the study's sources, downloaded as their hubs publish them (Parquet),
into the JSONL.gz files each catalog entry names, row for row and field for field (each
source keeps its own schema; rmgen's adapters read it).

Where the Parquet files are found: each catalog file lives in a folder (its path's first
component, e.g. `ultrafeedback_binarized/train_prefs.jsonl.gz`); the exporter looks in the
folder of that name under --from (matched without case, so `Nectar/` serves `nectar/`) and
takes every `*.parquet` below it whose name or folder is the file's stem (`train_prefs`:
`data/train_prefs-00000-of-00001.parquet`; `comparisons`: `comparisons/train/0000.parquet`);
when no Parquet file is named so and the catalog wants a single file from that folder, every
Parquet file below it (a source without splits, e.g. `nectar/nectar.jsonl.gz`). Shards are
concatenated in path order. The output is deterministic (gzip without a timestamp).
Then: `rmgen data stats --catalog CATALOG --data-root OUT --dataset NAME`.
"""
from __future__ import annotations

import argparse
import base64
import datetime
import decimal
import gzip
import io
import json
import math
import sys
from pathlib import Path, PurePosixPath
from typing import Dict, List, Optional, Tuple


class ExportError(Exception):
    pass


def _catalog_files(catalog: Path) -> Dict[str, List[str]]:
    """Every file the catalog names (relative to its root) -> the entries using it."""
    import yaml

    try:
        doc = yaml.safe_load(catalog.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ExportError(f"{catalog}: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("datasets"), dict):
        raise ExportError(f"{catalog}: expected a mapping with `datasets:`")
    files: Dict[str, List[str]] = {}
    for name, entry in doc["datasets"].items():
        splits = (entry or {}).get("splits") if isinstance(entry, dict) else None
        if not isinstance(splits, dict):
            raise ExportError(f"{catalog}: dataset '{name}': field 'splits' must be a mapping")
        for split, v in splits.items():
            path = v.get("path") if isinstance(v, dict) else v
            if not isinstance(path, str) or not path:
                raise ExportError(f"{catalog}: dataset '{name}': splits.{split}: no path")
            files.setdefault(path, []).append(f"{name}:{split}")
    return files


def _stem(path: str) -> str:
    name = PurePosixPath(path).name
    for ext in (".jsonl.gz", ".json.gz", ".jsonl", ".json", ".gz"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def _find_folder(root: Path, folder: str) -> Optional[Path]:
    exact = root / folder
    if exact.is_dir():
        return exact
    for p in sorted(root.iterdir()) if root.is_dir() else []:
        if p.is_dir() and p.name.lower() == folder.lower():
            return p
    return None


def _named(rel: PurePosixPath, stem: str) -> bool:
    """The Parquet file at `rel` is named for `stem`: a folder of that name, or a file name
    that is the stem or starts with `stem-` (the hub's `train_prefs-00000-of-00001`)."""
    if stem in rel.parts[:-1]:
        return True
    name = rel.name[: -len(".parquet")]
    return name == stem or name.startswith(stem + "-")


def sources_for(target: str, src_root: Path, sole_in_folder: bool) -> Tuple[Path, List[Path]]:
    parts = PurePosixPath(target).parts
    if len(parts) < 2:
        raise ExportError(f"{target}: a catalog file must sit in a folder named for its source")
    folder = _find_folder(src_root, parts[0])
    if folder is None:
        raise FileNotFoundError(f"no folder {src_root / parts[0]}")
    shards = sorted(p for p in folder.rglob("*.parquet") if p.is_file())
    if not shards:
        raise ExportError(f"{folder}: no .parquet file")
    stem = _stem(target)
    named = [p for p in shards if _named(PurePosixPath(p.relative_to(folder).as_posix()), stem)]
    if named:
        return folder, named
    if sole_in_folder:
        return folder, shards
    raise ExportError(f"{folder}: no Parquet file named for '{stem}' (a folder `{stem}/` or "
                      f"a file `{stem}-*.parquet`) among {len(shards)} file(s)")


def _jsonable(v):
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return None if math.isnan(v) or math.isinf(v) else v
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        # A Parquet map arrives as a list of (key, value) pairs.
        if v and all(isinstance(x, tuple) and len(x) == 2 for x in v):
            return {str(k): _jsonable(x) for k, x in v}
        return [_jsonable(x) for x in v]
    if isinstance(v, bytes):
        try:
            return v.decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(v).decode("ascii")
    if isinstance(v, (datetime.datetime, datetime.date, datetime.time)):
        return v.isoformat()
    if isinstance(v, datetime.timedelta):
        return v.total_seconds()
    if isinstance(v, decimal.Decimal):
        return float(v)
    return str(v)


def export_file(shards: List[Path], out: Path, batch_rows: int = 4096) -> int:
    """Writes the rows of `shards`, in order, as gzip JSON lines into `out`; returns the
    row count. A shard that is not valid Parquet is an error naming it."""
    import pyarrow.parquet as pq

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    rows = 0
    with open(tmp, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
            text = io.TextIOWrapper(gz, encoding="utf-8", newline="\n")
            for shard in shards:
                try:
                    f = pq.ParquetFile(shard)
                    for batch in f.iter_batches(batch_size=batch_rows):
                        for row in batch.to_pylist():
                            text.write(json.dumps(_jsonable(row), ensure_ascii=False,
                                                  separators=(",", ":")))
                            text.write("\n")
                            rows += 1
                except Exception as e:  # pyarrow raises several kinds for a broken file
                    tmp.unlink(missing_ok=True)
                    raise ExportError(f"{shard}: not readable as Parquet: {e}") from None
            text.flush()
            text.detach()
    tmp.replace(out)
    return rows


def export(catalog: Path, src_root: Path, out_root: Path, only: Optional[List[str]] = None,
           log=print) -> Tuple[int, List[str]]:
    """Exports every catalog file found under src_root. Returns (files written, errors)."""
    files = _catalog_files(catalog)
    for p in files:
        pp = PurePosixPath(p)
        if pp.is_absolute() or ".." in pp.parts:
            raise ExportError(f"{catalog}: '{p}' ({', '.join(files[p])}): only paths inside the "
                              "catalog's root can be exported (no absolute path, no '..')")
    # Counted over the whole catalog, before --only: a folder that serves two files is never
    # taken whole for one of them.
    per_folder: Dict[str, int] = {}
    for p in files:
        per_folder[PurePosixPath(p).parts[0]] = per_folder.get(PurePosixPath(p).parts[0], 0) + 1
    if only:
        unknown = set(only) - {u.split(":")[0] for users in files.values() for u in users}
        if unknown:
            raise ExportError(f"{catalog}: no dataset {', '.join(sorted(unknown))}")
        files = {p: u for p, u in files.items() if any(x.split(":")[0] in only for x in u)}
    written, errors = 0, []
    for target, users in sorted(files.items()):
        used_by = ", ".join(users)
        try:
            folder, shards = sources_for(target, src_root,
                                         per_folder[PurePosixPath(target).parts[0]] == 1)
        except FileNotFoundError as e:
            log(f"skip {target} ({used_by}): {e}")
            continue
        except ExportError as e:
            errors.append(f"{target} ({used_by}): {e}")
            continue
        try:
            n = export_file(shards, out_root / target)
        except ExportError as e:
            errors.append(f"{target} ({used_by}): {e}")
            continue
        written += 1
        log(f"wrote {out_root / target}: {n} rows from {len(shards)} Parquet file(s) in "
            f"{folder} ({used_by})")
    return written, errors


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rmgen.data",
                                 description="the study's sources from the hub's Parquet files")
    sub = ap.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="Parquet (as the hubs ship it) -> the catalog's JSONL.gz")
    ex.add_argument("--catalog", required=True, help="the dataset catalog (configs/datasets.yaml)")
    ex.add_argument("--from", dest="src", required=True, help="the downloaded sources' folder")
    ex.add_argument("--out", required=True, help="where the JSONL.gz files go (the data root)")
    ex.add_argument("--only", default="", help="comma-separated catalog entries")
    a = ap.parse_args(argv)
    try:
        written, errors = export(Path(a.catalog), Path(a.src), Path(a.out),
                                 [x for x in a.only.split(",") if x] or None)
    except ExportError as e:
        print(f"rmgen.data export: {e}", file=sys.stderr)
        return 1
    for e in errors:
        print(f"rmgen.data export: {e}", file=sys.stderr)
    if written == 0 and not errors:
        print(f"rmgen.data export: no source of {a.catalog} found under {a.src}", file=sys.stderr)
        return 1
    print(f"{written} file(s) written under {a.out}; read them with `rmgen data stats "
          f"--catalog {a.catalog} --data-root {a.out} --dataset NAME`")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
