"""The bytes a tiersync record's owner signs, rebuilt from the record's fields
alone, following the layout documented in daemon/src/origin.rs
(`tiersync.record.v1` and `tiersync.content.v1`). Written from the
documentation, not from the Rust code, so that an error in either shows up as
a signature that does not verify.

    python3 record_layout.py RECORD.json LEAF_OUT

RECORD.json holds the record's fields (bytes as hex); LEAF_OUT receives the
signed bytes.
"""
import json
import sys

from gmssl import func, sm3


def sm3_bytes(data: bytes) -> bytes:
    return bytes.fromhex(sm3.sm3_hash(func.bytes_to_list(data)))


def put(out: bytearray, data: bytes) -> None:
    out += len(data).to_bytes(4, "big")
    out += data


def put_scope(out: bytearray, scope) -> None:
    if scope is None:
        out.append(0)
        return
    out.append(1)
    out += int(scope["up_to"]).to_bytes(4, "big", signed=True)
    for field in ("down_to", "departments"):
        out += len(scope[field]).to_bytes(4, "big")
        for item in scope[field]:
            put(out, item.encode())


def content_digest(r) -> bytes:
    if r["withdrawn"]:
        return bytes.fromhex(r["content_digest"])
    out = bytearray()
    put(out, b"tiersync.content.v1")
    out.append(1 if r["deleted"] else 0)
    out += len(r["keys"]).to_bytes(4, "big")
    for name, value in r["keys"]:
        put(out, name.encode())
        put(out, value.encode())
    put(out, bytes.fromhex(r["payload"]))
    return sm3_bytes(bytes(out))


def signed_bytes(r) -> bytes:
    out = bytearray()
    put(out, b"tiersync.record.v1")
    put(out, bytes.fromhex(r["id"]))
    put(out, r["kind"].encode())
    put(out, r["owner_node"].encode())
    put(out, r["owner_department"].encode())
    out += int(r["version"]).to_bytes(8, "big")
    out += int(r["updated_at"]).to_bytes(8, "big")
    put_scope(out, r["scope"])
    put_scope(out, r["reach"])
    put(out, content_digest(r))
    return bytes(out)


if __name__ == "__main__":
    record = json.load(open(sys.argv[1]))
    open(sys.argv[2], "wb").write(signed_bytes(record))
