// A department adapter for tiersync in Node.js, from the .proto files alone
// (loaded at run time with @grpc/proto-loader; no code generation).
//
// It docks at one node's adapter port with the department's certificate:
// who am I, a lookup by ID number, a subscription acknowledged and resumed,
// a submission linked instead of copied, and a read the grant refuses.
//
// Usage (see ../run.sh):
//   TIERSYNC_PROTO=../../../proto node department.js --addr 127.0.0.1:7403 \
//     --node 5111 --ca pki/ca.pem --cert pki/5111-civil-affairs.pem \
//     --key pki/5111-civil-affairs.key --matter 5111-MZ-0001 \
//     --id-number 11010519491231002X --expect 3
'use strict';

const fs = require('fs');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

function parseArgs(argv) {
  const args = {};
  for (let i = 0; i < argv.length; i += 2) {
    if (!argv[i].startsWith('--') || argv[i + 1] === undefined) {
      throw new Error(`expected --name value pairs, got ${argv[i]}`);
    }
    args[argv[i].slice(2)] = argv[i + 1];
  }
  for (const k of ['addr', 'node', 'ca', 'cert', 'key', 'matter', 'id-number', 'expect']) {
    if (!args[k]) throw new Error(`--${k} is required`);
  }
  return args;
}

const args = parseArgs(process.argv.slice(2));
const protoRoot = process.env.TIERSYNC_PROTO || path.join(__dirname, '..', '..', '..', 'proto');
const options = { keepCase: false, longs: String, enums: String, defaults: true, includeDirs: [protoRoot] };
const packages = protoLoader.loadSync(
  ['tiersync/adapter/v1/adapter.proto', 'civil/v1/resident.proto'],
  options,
);
const loaded = grpc.loadPackageDefinition(packages);
const adapter = loaded.tiersync.adapter.v1;
// Payloads are encoded messages of the record's kind: decode them with the
// message type from the same definitions.
const protobuf = require('protobufjs');
const types = new protobuf.Root();
types.resolvePath = (_origin, target) => path.join(protoRoot, target);
types.loadSync(['civil/v1/resident.proto'], { keepCase: false });
const Resident = types.lookupType('civil.v1.Resident');

function connect() {
  const credentials = grpc.credentials.createSsl(
    fs.readFileSync(args.ca),
    fs.readFileSync(args.key),
    fs.readFileSync(args.cert),
  );
  // The node's certificate names it `<code>.node.tiersync`.
  return new adapter.AdapterService(args.addr, credentials, {
    'grpc.ssl_target_name_override': `${args.node}.node.tiersync`,
    'grpc.default_authority': `${args.node}.node.tiersync`,
  });
}

function check(condition, what) {
  if (!condition) {
    console.error(`FAILED: ${what}`);
    process.exit(1);
  }
  console.log(`ok: ${what}`);
}

const call = (client, method, request) =>
  new Promise((resolve, reject) => {
    client[method](request, { deadline: Date.now() + 10000 }, (err, response) =>
      err ? reject(err) : resolve(response),
    );
  });

// Reads a subscription until it reaches the node's head.
function subscribeUntilCaughtUp(client, purpose, name) {
  return new Promise((resolve, reject) => {
    const deliveries = [];
    const stream = client.Subscribe(
      { subscription: name, kinds: ['civil.v1.Resident'], purpose, pageSize: 100 },
      { deadline: Date.now() + 30000 },
    );
    let done = false;
    stream.on('data', (page) => {
      deliveries.push(...page.deliveries);
      if (page.caughtUp && !done) {
        done = true;
        resolve({ deliveries, through: page.throughSeq });
        stream.cancel();
      }
    });
    stream.on('error', (err) => {
      if (!done && err.code !== grpc.status.CANCELLED) reject(err);
    });
  });
}

async function main() {
  const client = connect();
  const purpose = { matterCode: args.matter, clearFields: [] };

  const me = await call(client, 'WhoAmI', {});
  console.log(`docked as ${me.department} (${me.departmentName}) at node ${me.node}`);
  check(me.grants.length >= 1, 'the department holds a grant in effect');

  const found = await call(client, 'Lookup', {
    kind: 'civil.v1.Resident', key: 'id_digest', value: args['id-number'], purpose,
  });
  check(found.records.length === 1, 'lookup by ID number finds one resident');
  const resident = Resident.decode(found.records[0].payload);
  check(resident.idNumber === args['id-number'], 'the ID number is in clear (the grant names it)');
  check(resident.name.endsWith('*'), `the name is masked (${resident.name})`);

  const first = await subscribeUntilCaughtUp(client, purpose, 'node-example');
  check(first.deliveries.length === Number(args.expect),
    `the subscription delivers all ${args.expect} residents`);
  const acked = await call(client, 'Acknowledge', { subscription: 'node-example', throughSeq: first.through });
  check(acked.acknowledgedThrough === first.through, 'the cursor is committed');
  const again = await subscribeUntilCaughtUp(connect(), purpose, 'node-example');
  check(again.deliveries.length === 0, 'after the acknowledgement nothing is delivered again');

  const payload = Resident.encode(Resident.create({
    name: '李小红', idNumber: '511102198507150020', addressCode: '511102004001',
  })).finish();
  const submitted = await call(client, 'Submit', { kind: 'civil.v1.Resident', payload, purpose });
  check(['SUBMIT_OUTCOME_LINKED', 'SUBMIT_OUTCOME_UPDATED'].includes(submitted.outcome),
    `a resident the node holds is linked or updated, not copied (${submitted.outcome})`);

  try {
    await call(client, 'Lookup', {
      kind: 'civil.v1.Household', key: 'head_id_digest', value: args['id-number'], purpose,
    });
    check(false, 'a household lookup is refused');
  } catch (err) {
    check(err.code === grpc.status.PERMISSION_DENIED, 'a household lookup is refused');
    check(err.details.includes('civil.v1.Household') && err.details.includes('grant'),
      `the refusal names the grant and the kind: ${err.details}`);
  }
  client.close();
  console.log('node.js adapter example: all checks passed');
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
