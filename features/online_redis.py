"""A bulk writer for Feast's Redis online store: Feast's own layout and bytes, encoded in bulk, sent as raw HSETs.

Feast keeps one Redis hash per entity (key: the serialised entity key + the project name) holding, per
feature, `murmur3("<view>:<feature>")` -> ValueProto bytes, and per view `_ts:<view>` -> a Timestamp
proto. Its own `write_to_online_store` builds one protobuf per value in Python and one redis-py call per
user; this writer encodes every double column with NumPy, every other column once per distinct value
(with Feast's own converter), assembles the HSET commands of a chunk of users in the Redis protocol and
pipelines them through one connection. What Feast reads back (`get_online_features`) is the same; the
test holds the two to it. A missing value (NaN, None) is stored empty, which Feast reads as "no value".

Redis memory: a user's hash holds every online feature (~140 in the demo world). Past
`hash-max-listpack-entries` (128 by default) Redis stores it as a hash table, about 3x larger;
`hash-max-listpack-entries 256` keeps it compact (see README, "Online store").
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
from feast import FeatureStore, FeatureView
from feast.infra.online_stores.helpers import _mmh3
from feast.infra.online_stores.redis import RedisOnlineStore
from feast.type_map import python_values_to_proto_values
from feast.types import Float32, Float64
from google.protobuf.timestamp_pb2 import Timestamp

from nextbest.features.online_sqlite import _entity_keys, _epoch_ns

__all__ = ["write_view"]

_CHUNK = 10_000  # users per pipelined batch: bounds the command buffer (~50 MB at 140 features)
_DOUBLE_TAG = 0x29  # protobuf tag of Value.double_val (field 5, 64-bit wire type)


def _bulk(payload: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(payload), payload)


def _double_pieces(field: bytes, values: np.ndarray) -> list[bytes]:
    """`field` + ValueProto(double_val=v) as RESP bulk strings, for every value; NaN stored empty."""
    head = _bulk(field) + b"$9\r\n"
    width = len(head) + 9 + 2
    buf = np.empty((len(values), width), dtype=np.uint8)
    buf[:, :len(head)] = np.frombuffer(head, dtype=np.uint8)
    buf[:, len(head)] = _DOUBLE_TAG
    buf[:, len(head) + 1:len(head) + 9] = values.astype("<f8").view(np.uint8).reshape(-1, 8)
    buf[:, -2:] = np.frombuffer(b"\r\n", dtype=np.uint8)
    pieces = buf.view(np.dtype((np.void, width))).ravel().tolist()  # one bytes object per value
    missing = np.flatnonzero(np.isnan(values))
    if len(missing):
        empty = _bulk(field) + _bulk(b"")
        for i in missing.tolist():
            pieces[i] = empty
    return pieces


def _pieces_by_value(field: bytes, values: pd.Series, value_type) -> list[bytes]:
    """`field` + each value's ValueProto as RESP bulk strings, encoded once per distinct value."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    protos = python_values_to_proto_values(list(uniques) + [None], value_type)
    encoded = [_bulk(field) + _bulk(p.SerializeToString()) for p in protos]
    encoded[-1] = _bulk(field) + _bulk(b"")  # code -1 (missing): Feast's empty value
    table = np.array(encoded, dtype=object)
    return table[codes].tolist()


def _timestamps(field: bytes, times: pd.Series) -> list[bytes]:
    """`field` + each time's Timestamp proto (Feast's `_ts:<view>` value) as RESP bulk strings, once per distinct time."""
    ns = _epoch_ns(times)  # whatever the column's unit: DuckDB's newest rows come in microseconds
    codes, uniques = pd.factorize(ns)
    encoded = [_bulk(field) + _bulk(Timestamp(seconds=int(t // 10**9), nanos=int(t % 10**9)).SerializeToString())
               for t in uniques.tolist()]
    return np.array(encoded, dtype=object)[codes].tolist()


def _commands(df: pd.DataFrame, view: FeatureView, keys: list[bytes]) -> bytes:
    """The HSET commands (RESP) writing the view's features of every row of `df` under `keys`."""
    columns = [_timestamps(f"_ts:{view.name}".encode(), df["event_timestamp"])]
    for f in sorted(view.features, key=lambda f: f.name):
        field = _mmh3(f"{view.name}:{f.name}")
        if f.dtype in (Float64, Float32):
            columns.append(_double_pieces(field, df[f.name].to_numpy(dtype="float64", na_value=np.nan)))
        else:
            columns.append(_pieces_by_value(field, df[f.name], f.dtype.to_value_type()))
    arity = 2 + 2 * len(columns)
    heads = [b"*%d\r\n$4\r\nHSET\r\n%s" % (arity, _bulk(k)) for k in keys]
    return b"".join(map(b"".join, zip(heads, *columns, strict=True)))


def _await_replies(connection, count: int, view: str) -> None:
    """Read the `count` one-line replies of the HSETs just sent (integers; an error is a line starting with "-").

    Counted on the raw socket: redis-py's parser costs ~25 us per reply, a third of the load at 1M users."""
    sock, seen, last = connection._sock, 0, b"\n"
    while seen < count:
        data = sock.recv(1 << 20)
        if not data:
            raise ConnectionError(f"redis closed the connection while loading view {view!r}")
        if b"\n-" in last + data:
            at = (last + data).index(b"\n-") + 1
            connection.disconnect()  # the replies after it are unread: this connection is not reused
            raise RuntimeError(f"redis refused a write of view {view!r}: {(last + data)[at:at + 200]!r}")
        seen += data.count(b"\r\n")
        last = data[-1:]


def write_view(store: FeatureStore, view: FeatureView, df: pd.DataFrame) -> int:
    """Write one row per user of `df` into Feast's Redis online store (overwriting those users' values of the
    view, as Feast's `skip_dedup` write does); returns users written."""
    config = store.config
    if config.online_store.type != "redis":
        raise ValueError("the Redis bulk writer only handles the Redis online store")
    if config.registry.enable_online_feature_view_versioning:
        raise ValueError("the Redis bulk writer does not handle versioned feature views; use feast-write")
    project = config.project.encode()
    client = RedisOnlineStore()._get_client(config.online_store)
    connection = client.connection_pool.get_connection()
    # One thread sends a chunk and waits for Redis to apply it while this one encodes the next (the socket
    # calls release the GIL): Python's encoding and Redis' work overlap on two cores.
    sender = ThreadPoolExecutor(max_workers=1)
    pending = None
    try:
        connection.connect()
        for start in range(0, len(df), _CHUNK):
            part = df.iloc[start:start + _CHUNK]
            keys = [k + project for k in _entity_keys(part["user_id"].to_numpy(), config.entity_key_serialization_version)]
            commands = _commands(part, view, keys)
            if pending is not None:
                pending.result()
            pending = sender.submit(lambda b, n: (connection.send_packed_command([b]), _await_replies(connection, n, view.name)),
                                    commands, len(part))
        if pending is not None:
            pending.result()
    except BaseException:
        connection.disconnect()
        raise
    finally:
        sender.shutdown(wait=True)
        client.connection_pool.release(connection)
    if config.online_store.key_ttl_seconds:  # as Feast's own writer: every written key expires
        with client.pipeline(transaction=False) as pipe:
            for start in range(0, len(df), _CHUNK):
                for k in _entity_keys(df["user_id"].iloc[start:start + _CHUNK].to_numpy(),
                                      config.entity_key_serialization_version):
                    pipe.expire(k + project, config.online_store.key_ttl_seconds)
                pipe.execute()
    return len(df)
