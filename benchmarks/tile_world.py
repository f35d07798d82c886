"""Benchmark helper: a large home made by tiling a small built one (NOT a simulation; for measurements only).

Copies the raw tables and feature tables of a built home K times, each copy with new user ids
(`<user_id>-t<k>`; contact ids likewise), so the online load and the training sets can be measured at
1M users while the 1M-user feature build itself is another piece of work. Every copy has the same
behaviour as its original: good for time and memory, useless for model quality. DuckDB streams the
copies Parquet to Parquet, so tiling 20k users to 1M needs little memory. Then `features apply` runs on
the new home.

    .venv/bin/python benchmarks/tile_world.py --source <built home> --home /tmp/tiled-1m --users 1000000
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# table -> id columns that must stay unique per copy (user_id always)
_IDS = {"contacts": ("contact_id",)}


def _copy(con, src: Path, dst: Path, copies: int, ids: tuple[str, ...]) -> None:
    import pyarrow.parquet as pq

    names = pq.read_schema(src).names
    replace = ", ".join(f"t.{c} || '-t' || r.k::VARCHAR AS {c}" for c in ("user_id", *ids) if c in names)
    body = f"t.* REPLACE ({replace})" if replace else "t.*"
    con.execute(f"COPY (SELECT {body} FROM range(?) AS r(k), read_parquet(?) AS t) TO '{dst}' "
                "(FORMAT parquet, ROW_GROUP_SIZE 122880)", [copies, str(src)])
    if pq.read_schema(dst).names != names:
        raise RuntimeError(f"tiling {src.name} changed its columns: {pq.read_schema(dst).names} != {names}")


def tile(source: Path, home: Path, users: int) -> dict:
    """Write a home of `users` users (a multiple of the source's count, rounded up) tiled from `source`."""
    import duckdb
    import pyarrow.parquet as pq

    base = pq.read_metadata(source / "raw" / "users.parquet").num_rows
    copies = -(-users // base)
    if home.exists():
        shutil.rmtree(home)
    (home / "raw").mkdir(parents=True)
    (home / "feature_tables").mkdir()
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")
    con.execute("SET preserve_insertion_order = true")
    for folder in ("raw", "feature_tables"):
        for src in sorted((source / folder).glob("*.parquet")):
            dst = home / folder / src.name
            if "user_id" in pq.read_schema(src).names:
                _copy(con, src, dst, copies, _IDS.get(src.stem, ()))
            else:  # catalogs (offers, channels): shared by every copy
                shutil.copy(src, dst)
    con.close()
    manifest = json.loads((source / "raw" / "_manifest.json").read_text())
    manifest["snapshot_id"] = f"tiled-{copies}x-{manifest.get('snapshot_id', 'unknown')}"
    manifest["rows"] = {p.stem: pq.read_metadata(p).num_rows for p in (home / "raw").glob("*.parquet")}
    (home / "raw" / "_manifest.json").write_text(json.dumps(manifest))
    for name in ("operator.yaml",):
        if (source / name).exists():
            shutil.copy(source / name, home / name)
    return {"copies": copies, "users": base * copies, "rows": manifest["rows"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="a built home (raw + feature tables)")
    parser.add_argument("--home", type=Path, required=True, help="where to write the tiled home (replaced)")
    parser.add_argument("--users", type=int, required=True)
    args = parser.parse_args()
    if not (args.source / "feature_tables").is_dir() or not (args.source / "raw" / "users.parquet").exists():
        sys.exit(f"error: {args.source} is not a built home (no raw/users.parquet or feature_tables/): run "
                 "`nextbest simulate` and `nextbest features build` there first")
    sys.path.insert(0, str(ROOT))
    from nextbest.features.settings import Settings
    from nextbest.features.store import apply

    started = time.perf_counter()
    out = tile(args.source, args.home, args.users)
    apply(Settings(home=args.home))
    out["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
