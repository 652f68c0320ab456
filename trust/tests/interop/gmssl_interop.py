#!/usr/bin/env python3
"""Independent SM2/SM3 checks for tiersync-trust, written against gmssl, not our Rust types.

Needs gmssl==3.2.2 and pycryptodomex (pinned in .ci/run). Subcommands, all over files or
hex so the Rust test can drive them:

  verify PUB_XY_HEX MSG_FILE SIG_DER_FILE   exit 0 and print "valid" if the DER SM2
                                            signature verifies (ID 1234567812345678)
  sign MSG_FILE                             make a key, sign; print "public_xy <hex>" and
                                            "signature_der <hex>" lines
  verify-cert ISSUER_XY_HEX CERT_DER_FILE   exit 0 and print "valid" if the X.509 certificate
                                            is signed SM2-with-SM3 (DER signature) by the issuer
  verify-proof PUB_XY_HEX PROOF_FILE LEAF_FILE
                                            exit 0 and print "valid" if a RecordProof (bytes,
                                            format v1) proves the leaf: parsed, its path checked
                                            (RFC 9162) and its tiersync.batch.v1 message rebuilt
                                            and verified here, from the documented layouts
  sm3 FILE                                  print SM3 hex of the file
  tree N                                    RFC 6962 tree with SM3 over leaves b"leaf 0" ...
                                            b"leaf N-1"; print its "root" and "path" lines
  kat MAX                                   the known-answer file for trees of 0..MAX leaves

The tree here follows the RFC 6962 definitions literally (recursive split at the largest
power of two below n); the Rust side builds bottom up, so agreement is a real check.
"""

import secrets
import sys

from Cryptodome.Util.asn1 import DerBitString, DerObjectId, DerSequence
from gmssl import func, sm2, sm3

SM2_WITH_SM3 = "1.2.156.10197.1.501"

def sm3_hex(data: bytes) -> str:
    return sm3.sm3_hash(func.bytes_to_list(data))


def sm3_bytes(data: bytes) -> bytes:
    return bytes.fromhex(sm3_hex(data))


def crypt(public_xy: str, private_hex=None) -> sm2.CryptSM2:
    assert len(public_xy) == 128, "want the 128 hex digits of x||y, without the 04 byte"
    c = sm2.CryptSM2(public_key=public_xy, private_key=private_hex, asn1=True)
    # gmssl's constructor does public_key.lstrip("04") when the hex starts with "04", which
    # strips too much when x itself starts with 0x04 or 0x40...; set the key after it.
    c.public_key = public_xy
    # gmssl hard-codes ID 1234567812345678 (ENTL 0x0080) in its Z value (_sm3_z); the Rust
    # test would fail on any other ID, so agreement is checked, not assumed.
    return c


def cmd_verify(public_xy, msg_file, sig_file):
    msg = open(msg_file, "rb").read()
    sig_der = open(sig_file, "rb").read()
    ok = crypt(public_xy).verify_with_sm3(sig_der.hex(), msg)
    print("valid" if ok else "invalid")
    return 0 if ok else 1


def cmd_verify_cert(issuer_xy, cert_file):
    """Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue BIT STRING },
    read with pycryptodomex's DER classes, not with anything of ours."""
    cert = DerSequence()
    cert.decode(open(cert_file, "rb").read())
    tbs_der, alg_der, sig_bits = cert[0], cert[1], cert[2]
    alg = DerSequence()
    alg.decode(alg_der)
    oid = DerObjectId()
    oid.decode(alg[0])
    if oid.value != SM2_WITH_SM3:
        print("invalid: signature algorithm %s" % oid.value)
        return 1
    sig_der = DerBitString().decode(sig_bits).value
    ok = crypt(issuer_xy).verify_with_sm3(sig_der.hex(), tbs_der)
    print("valid" if ok else "invalid")
    return 0 if ok else 1


def cmd_sign(msg_file):
    msg = open(msg_file, "rb").read()
    n = int(sm2.default_ecc_table["n"], 16)
    d = secrets.randbelow(n - 2) + 1
    private_hex = "%064x" % d
    # Public key = d*G with gmssl's own point arithmetic.
    helper = sm2.CryptSM2(public_key="00" * 64, private_key=private_hex)
    public_xy = helper._kg(d, sm2.default_ecc_table["g"])
    c = crypt(public_xy, private_hex)
    sig_hex = None
    while sig_hex is None:  # sign() returns None for the rare bad nonce
        sig_hex = c.sign_with_sm3(msg)
    assert c.verify_with_sm3(sig_hex, msg)
    print("public_xy %s" % public_xy)
    print("signature_der %s" % sig_hex)
    return 0


def parse_proof(b: bytes):
    """RecordProof::to_bytes, format v1: 0x01, alg (u8 len), signer (u8 len), key id (16),
    leaf count (u64 BE), root (32), signature (u8 len, DER), leaf index (u64 BE),
    path count (u8), path (32 each)."""
    at = 0

    def take(n):
        nonlocal at
        if at + n > len(b):
            raise ValueError("truncated at byte %d" % at)
        out = b[at:at + n]
        at += n
        return out

    def short():
        return take(take(1)[0])

    if take(1) != b"\x01":
        raise ValueError("not format v1")
    proof = {
        "algorithm": short(),
        "signer": short(),
        "key_id": take(16),
        "leaf_count": int.from_bytes(take(8), "big"),
        "root": take(32),
        "signature": short(),
        "leaf_index": int.from_bytes(take(8), "big"),
    }
    proof["path"] = [take(32) for _ in range(take(1)[0])]
    if at != len(b):
        raise ValueError("%d trailing bytes" % (len(b) - at))
    return proof


def signed_message(proof) -> bytes:
    """The tiersync.batch.v1 layout: six fields, each a u32 BE length then the bytes."""
    fields = [
        b"tiersync.batch.v1",
        proof["algorithm"],
        proof["signer"],
        proof["key_id"],
        proof["leaf_count"].to_bytes(8, "big"),
        proof["root"],
    ]
    return b"".join(len(f).to_bytes(4, "big") + f for f in fields)


def root_from_path(leaf: bytes, index: int, count: int, path) -> bytes:
    """RFC 9162 2.1.3.2, literally."""
    if index >= count:
        raise ValueError("index out of range")
    fn, sn, r = index, count - 1, leaf_hash(leaf)
    for p in path:
        if sn == 0:
            raise ValueError("path too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ValueError("path too short")
    return r


def cmd_verify_proof(public_xy, proof_file, leaf_file):
    try:
        proof = parse_proof(open(proof_file, "rb").read())
        leaf = open(leaf_file, "rb").read()
        if proof["algorithm"] != b"sm2-sm3":
            raise ValueError("algorithm %r" % proof["algorithm"])
        root = root_from_path(leaf, proof["leaf_index"], proof["leaf_count"], proof["path"])
        if root != proof["root"]:
            raise ValueError("path leads to another root")
        if not crypt(public_xy).verify_with_sm3(proof["signature"].hex(), signed_message(proof)):
            raise ValueError("signature")
    except ValueError as e:
        print("invalid: %s" % e)
        return 1
    print("valid")
    return 0


def leaf_hash(data: bytes) -> bytes:
    return sm3_bytes(b"\x00" + data)


def node_hash(left: bytes, right: bytes) -> bytes:
    return sm3_bytes(b"\x01" + left + right)


def split(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(leaves):
    """RFC 6962 2.1 Merkle Tree Hash."""
    if len(leaves) == 0:
        return sm3_bytes(b"")
    if len(leaves) == 1:
        return leaf_hash(leaves[0])
    k = split(len(leaves))
    return node_hash(mth(leaves[:k]), mth(leaves[k:]))


def path(m, leaves):
    """RFC 6962 2.1.1 audit path of leaf m, from the leaf up."""
    if len(leaves) <= 1:
        return []
    k = split(len(leaves))
    if m < k:
        return path(m, leaves[:k]) + [mth(leaves[k:])]
    return path(m - k, leaves[k:]) + [mth(leaves[:k])]


def leaves_of(n):
    return [b"leaf %d" % i for i in range(n)]


def print_tree(n):
    leaves = leaves_of(n)
    print("root %d %s" % (n, mth(leaves).hex()))
    for i in range(n):
        print(("path %d %d %s" % (n, i, ",".join(h.hex() for h in path(i, leaves)))).rstrip())


def cmd_tree(n):
    print_tree(int(n))
    return 0


def cmd_kat(max_n):
    print("# RFC 6962 trees with SM3 over leaves b\"leaf 0\" .. b\"leaf n-1\".")
    print("# Generated by trust/tests/interop/gmssl_interop.py kat (gmssl SM3, recursive")
    print("# definitions); checked by trust/src/tree/tests.rs. Do not edit by hand.")
    print("# root <n> <root hex>")
    print("# path <n> <index> <sibling hashes from the leaf up, comma separated>")
    for n in range(int(max_n) + 1):
        print_tree(n)
    return 0


def main(argv):
    commands = {
        "verify": cmd_verify,
        "verify-cert": cmd_verify_cert,
        "verify-proof": cmd_verify_proof,
        "sign": cmd_sign,
        "sm3": lambda f: print(sm3_hex(open(f, "rb").read())) or 0,
        "tree": cmd_tree,
        "kat": cmd_kat,
    }
    if len(argv) < 2 or argv[1] not in commands:
        print(__doc__, file=sys.stderr)
        return 2
    return commands[argv[1]](*argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
