"""A department adapter for tiersync, written from the .proto files alone.

It docks at one node's adapter port with the department's certificate and
walks through what an integrator needs: who am I, look a resident up by ID
number, subscribe to residents from a durable cursor and acknowledge, resume
after a restart, submit a resident (collect once: the same one twice is
linked, not copied), and a read the grant does not allow.

Generate the Python modules first (see run.sh):

    python -m grpc_tools.protoc -I ../../../proto --python_out=gen \
        --grpc_python_out=gen tiersync/adapter/v1/adapter.proto ...

Usage:
    python department.py --addr 127.0.0.1:7403 --node 5111 \
        --ca pki/ca.pem --cert pki/5111-civil-affairs.pem \
        --key pki/5111-civil-affairs.key --matter 5111-MZ-0001 \
        --id-number 11010519491231002X
"""

import argparse
import os
import sys

import grpc

# Where the generated modules are: $TIERSYNC_GEN, or gen/ beside this file.
sys.path.insert(
    0,
    os.environ.get("TIERSYNC_GEN")
    or os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen"),
)

from civil.v1 import resident_pb2  # noqa: E402
from tiersync.adapter.v1 import adapter_pb2, adapter_pb2_grpc  # noqa: E402


def connect(args):
    """A channel to the node's adapter port over mutual TLS.

    The node's certificate names it as `<code>.node.tiersync`, so that is the
    name to verify whatever address is dialled.
    """
    def read(path):
        with open(path, "rb") as f:
            return f.read()

    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(args.ca),
        private_key=read(args.key),
        certificate_chain=read(args.cert),
    )
    options = [("grpc.ssl_target_name_override", f"{args.node}.node.tiersync")]
    channel = grpc.secure_channel(args.addr, credentials, options)
    return adapter_pb2_grpc.AdapterServiceStub(channel)


def check(condition, what):
    if not condition:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


def subscribe_until_caught_up(stub, purpose, name):
    """Reads pages of a subscription until it reaches the node's head.

    Returns the deliveries and the last page's through_seq (what to
    acknowledge once they are processed).
    """
    request = adapter_pb2.SubscribeRequest(
        subscription=name,
        kinds=["civil.v1.Resident"],
        purpose=purpose,
        page_size=100,
    )
    deliveries, through = [], 0
    stream = stub.Subscribe(request, timeout=30)
    for page in stream:
        deliveries.extend(page.deliveries)
        through = page.through_seq
        if page.caught_up:
            stream.cancel()
            break
    return deliveries, through


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", required=True)
    parser.add_argument("--node", required=True, help="the node's division code")
    parser.add_argument("--ca", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--matter", required=True, help="the grant's matter code")
    parser.add_argument("--id-number", required=True, help="a resident the node holds")
    parser.add_argument("--expect", type=int, required=True, help="residents the node holds")
    args = parser.parse_args()

    stub = connect(args)
    purpose = adapter_pb2.Purpose(matter_code=args.matter)

    me = stub.WhoAmI(adapter_pb2.WhoAmIRequest(), timeout=10)
    print(f"docked as {me.department} ({me.department_name}) at node {me.node}")
    check(len(me.grants) >= 1, "the department holds a grant in effect")

    # Lookup by ID number: the node digests it; the grant names id_number
    # in clear, so it comes back unmasked while the name is masked.
    found = stub.Lookup(
        adapter_pb2.LookupRequest(
            kind="civil.v1.Resident", key="id_digest", value=args.id_number, purpose=purpose
        ),
        timeout=10,
    )
    check(len(found.records) == 1, "lookup by ID number finds one resident")
    resident = resident_pb2.Resident.FromString(found.records[0].payload)
    check(resident.id_number == args.id_number, "the ID number is in clear (the grant names it)")
    check(resident.name.endswith("*"), f"the name is masked ({resident.name})")

    # Subscribe, process, acknowledge.
    deliveries, through = subscribe_until_caught_up(stub, purpose, "python-example")
    check(len(deliveries) == args.expect, f"the subscription delivers all {args.expect} residents")
    acked = stub.Acknowledge(
        adapter_pb2.AcknowledgeRequest(subscription="python-example", through_seq=through),
        timeout=10,
    )
    check(acked.acknowledged_through == through, "the cursor is committed")

    # A restart resumes after the acknowledgement: nothing comes again.
    again, _ = subscribe_until_caught_up(connect(args), purpose, "python-example")
    check(not again, "after the acknowledgement nothing is delivered again")

    # Collect once: submit a resident, then the same one again.
    new = resident_pb2.Resident(
        name="王小明",
        id_number="511102199003070013",
        address_code="511102004001",
    )
    submit = adapter_pb2.SubmitRequest(
        kind="civil.v1.Resident", payload=new.SerializeToString(), purpose=purpose
    )
    first = stub.Submit(submit, timeout=10)
    check(first.outcome == adapter_pb2.SUBMIT_OUTCOME_CREATED, "a new resident is created")
    second = stub.Submit(submit, timeout=10)
    check(second.outcome == adapter_pb2.SUBMIT_OUTCOME_LINKED, "the same resident again is linked")
    check(second.record.id == first.record.id, "linked to the same record, not copied")

    deliveries, _ = subscribe_until_caught_up(stub, purpose, "python-example")
    check(len(deliveries) == 1, "the subscription delivers the new resident only")

    # A kind the grant does not cover is refused, naming the grant.
    try:
        stub.Lookup(
            adapter_pb2.LookupRequest(
                kind="civil.v1.Household",
                key="head_id_digest",
                value=args.id_number,
                purpose=purpose,
            ),
            timeout=10,
        )
        check(False, "a household lookup is refused")
    except grpc.RpcError as e:
        check(e.code() == grpc.StatusCode.PERMISSION_DENIED, "a household lookup is refused")
        check("civil.v1.Household" in e.details() and "grant" in e.details(),
              f"the refusal names the grant and the kind: {e.details()}")
    print("python adapter example: all checks passed")


if __name__ == "__main__":
    main()
