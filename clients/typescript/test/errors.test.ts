import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';

import { Metadata, status as Status } from '@grpc/grpc-js';
import * as protobuf from 'protobufjs';

import {
  ERROR_CLASSES,
  InvalidRequestError,
  JobdError,
  LeaseExpiredError,
  UnauthenticatedError,
  UnavailableError,
  errorFromStatus,
} from '../src';
import { Jobd, jobdBinary } from './harness';

// google.rpc.Status with details, encoded as jobd encodes it, to check the decoding.
const root = protobuf.parse(`
  syntax = "proto3";
  package google.rpc;
  message Any { string type_url = 1; bytes value = 2; }
  message Status { int32 code = 1; string message = 2; repeated Any details = 3; }
  message ErrorInfo { string reason = 1; string domain = 2; map<string, string> metadata = 3; }
`, { keepCase: true }).root;
const StatusType = root.lookupType('google.rpc.Status');
const ErrorInfoType = root.lookupType('google.rpc.ErrorInfo');

function detailsMetadata(code: number, infos: { reason: string; domain: string; metadata?: Record<string, string> }[]): Metadata {
  const details = infos.map((info) => ({
    type_url: 'type.googleapis.com/google.rpc.ErrorInfo',
    value: ErrorInfoType.encode(ErrorInfoType.fromObject(info)).finish(),
  }));
  const bytes = StatusType.encode(StatusType.fromObject({ code, message: 'text', details })).finish();
  const metadata = new Metadata();
  metadata.set('grpc-status-details-bin', Buffer.from(bytes));
  return metadata;
}

test('every reason maps to its own error class, with its metadata', () => {
  const classes = new Set<unknown>();
  for (const [reason, Class] of Object.entries(ERROR_CLASSES)) {
    const error = errorFromStatus(Status.FAILED_PRECONDITION, 'message', detailsMetadata(9, [{ reason, domain: 'jobd', metadata: { k: 'v' } }]));
    assert.ok(error instanceof Class, reason);
    assert.ok(error instanceof JobdError);
    assert.equal(error.reason, reason);
    assert.equal(error.name, Class.name);
    assert.deepEqual(error.metadata, { k: 'v' });
    assert.equal(error.code, Status.FAILED_PRECONDITION);
    classes.add(Class);
  }
  assert.equal(classes.size, Object.keys(ERROR_CLASSES).length, 'one class per reason');
  const lease = errorFromStatus(Status.FAILED_PRECONDITION, 'm', detailsMetadata(9, [{ reason: 'LEASE_EXPIRED', domain: 'jobd', metadata: { deadline: 'ack' } }]));
  assert.ok(lease instanceof LeaseExpiredError);
  assert.equal(lease.metadata.deadline, 'ack');
});

test('an unknown reason keeps it on the base class; other domains and no details give the code name', () => {
  const unknown = errorFromStatus(Status.ABORTED, 'm', detailsMetadata(10, [{ reason: 'SOMETHING_NEW', domain: 'jobd' }]));
  assert.equal(unknown.constructor, JobdError);
  assert.equal(unknown.reason, 'SOMETHING_NEW');
  const foreign = errorFromStatus(Status.UNAVAILABLE, 'm', detailsMetadata(14, [{ reason: 'LEASE_EXPIRED', domain: 'envoy' }]));
  assert.ok(foreign instanceof UnavailableError);
  assert.equal(foreign.reason, 'UNAVAILABLE');
  const bare = errorFromStatus(Status.UNIMPLEMENTED, 'm', new Metadata());
  assert.equal(bare.reason, 'UNIMPLEMENTED');
  const garbage = new Metadata();
  garbage.set('grpc-status-details-bin', Buffer.from([0xff, 0xff, 0xff]));
  assert.equal(errorFromStatus(Status.INTERNAL, 'm', garbage).reason, 'INTERNAL');
});

test('jobd\'s refusals arrive as typed errors', async () => {
  const jobd = await Jobd.start();
  const client = jobd.client();
  try {
    const invalid = await client.submit({ queue: 'bad queue!', kind: 'k' }).then(() => assert.fail('should fail'), (error: unknown) => error);
    assert.ok(invalid instanceof JobdError, String(invalid));
    assert.equal(invalid.code, Status.INVALID_ARGUMENT);
    if (invalid.reason !== 'INVALID_ARGUMENT') {
      // A jobd that ships ErrorInfo names the reason and the field.
      assert.ok(invalid instanceof InvalidRequestError);
      assert.match(invalid.metadata.field ?? '', /queue/);
    }
  } finally {
    client.close();
    await jobd.stop();
  }
});

test('a bearer token opens the door; none gets UnauthenticatedError', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'jobd-ts-auth-'));
  const made = execFileSync(jobdBinary(), ['token', 'new', '--name', 'ts-client', '--role', 'submitter', '--role', 'operator', '--queue', '*']).toString();
  const [token, ...entry] = made.trim().split('\n');
  const authFile = join(dir, 'auth.toml');
  writeFileSync(authFile, entry.join('\n') + '\n');
  const jobd = await Jobd.start(['--auth-file', authFile]);
  const anonymous = jobd.client();
  const known = jobd.client({ token: token!.trim() });
  try {
    const denied = await anonymous.stats('q').then(() => assert.fail('should fail'), (error: unknown) => error);
    assert.ok(denied instanceof UnauthenticatedError, String(denied));
    assert.equal((await known.submit({ queue: 'q', kind: 'k' })).created, true);
    assert.equal((await known.stats('q')).queued, 1);
  } finally {
    anonymous.close();
    known.close();
    await jobd.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
