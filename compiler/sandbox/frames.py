"""The worker -> host reply format, read as hostile bytes.

A reply body is an uncompressed ``.npz`` (a zip of ``.npy`` members): ``status`` (JSON as
``uint8``) and numeric arrays. The worker may be compromised, so ``read_reply`` decides from
the bytes' own declarations, before allocating anything, that they are sane:

- every zip member is STORED (no compression: a small frame cannot inflate into gigabytes)
  and its declared size fits in the frame;
- every ``.npy`` header declares a plain numeric dtype (no objects, no structured records)
  and a shape whose bytes are exactly what the member holds;
- the status JSON is bounded in size and depth (``headcode.safe_json``).

Any failure, whatever Python raises underneath, is one ``MalformedReply``.
"""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np

from headcode.safe_json import loads_bounded

MAX_MEMBERS = 256
MAX_STATUS = 1 << 20   # bytes of a reply's JSON status
MAX_DEPTH = 16         # nesting of the status JSON (a compiled head is 5 deep)
MAX_NDIM = 4
_KINDS = "biuf"        # bool, int, unsigned, float


class MalformedReply(ValueError):
    """The worker's reply is not one the host reads; the message says why (short)."""


def write_reply(status: dict, arrays: dict[str, np.ndarray]) -> bytes:
    """The body the worker sends (``np.savez``: STORED members)."""
    buf = io.BytesIO()
    np.savez(buf, status=np.frombuffer(json.dumps(status).encode(), dtype=np.uint8), **arrays)
    return buf.getvalue()


def _array(raw: bytes, name: str) -> np.ndarray:
    f = io.BytesIO(raw)
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f, max_header_size=1024)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f, max_header_size=1024)
    else:
        raise MalformedReply(f"member {name}: npy version {version}")
    if dtype.hasobject or dtype.kind not in _KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise MalformedReply(f"member {name}: dtype {dtype.str} is not a plain number type")
    if len(shape) > MAX_NDIM or any((not isinstance(d, int)) or d < 0 for d in shape):
        raise MalformedReply(f"member {name}: shape {shape}")
    count = 1
    for d in shape:
        count *= d
    body = raw[f.tell():]
    if count * dtype.itemsize != len(body):
        raise MalformedReply(f"member {name}: declares {count * dtype.itemsize} bytes, holds {len(body)}")
    a = np.frombuffer(body, dtype=dtype)
    return a.reshape(shape, order="F" if fortran else "C").copy()


def _members(body: bytes) -> dict[str, bytes]:
    z = zipfile.ZipFile(io.BytesIO(body))
    infos = z.infolist()
    if len(infos) > MAX_MEMBERS:
        raise MalformedReply(f"{len(infos)} members")
    if sum(i.file_size for i in infos) > len(body):
        raise MalformedReply("members declare more bytes than the frame holds")
    out = {}
    for i in infos:
        if i.compress_type != zipfile.ZIP_STORED or i.file_size != i.compress_size:
            raise MalformedReply(f"member {i.filename[:40]!r} is compressed")
        if not i.filename.endswith(".npy") or i.filename[:-4] in out:
            raise MalformedReply(f"member {i.filename[:40]!r}")
        out[i.filename[:-4]] = z.read(i)
    return out


def read_reply(body: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    """``(status, arrays)`` from a reply body; ``MalformedReply`` for anything else."""
    try:
        members = _members(body)
        if "status" not in members:
            raise MalformedReply("no status")
        raw = _array(members.pop("status"), "status")
        if raw.dtype != np.uint8 or raw.ndim != 1 or raw.size > MAX_STATUS:
            raise MalformedReply("status is not a short byte string")
        status = loads_bounded(raw.tobytes(), MAX_STATUS, MAX_DEPTH)
        if not isinstance(status, dict):
            raise MalformedReply("status is not a JSON object")
        return status, {k: _array(v, k) for k, v in members.items()}
    except MalformedReply:
        raise
    except Exception as e:  # noqa: BLE001 - whatever the bytes make the readers raise, it is one refusal
        raise MalformedReply(type(e).__name__) from e
