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
  IdempotencyConflictError,
  InvalidRequestError,
  JobCancelledError,
  JobFinishedError,
  JobNotFoundError,
  JobdError,
  LeaseExpiredError,
  LeaseStaleError,
  LeaseTokenUnknownError,
  PastLastEventError,
  PayloadTooLargeError,
  PermissionDeniedError,
  UnauthenticatedError,
  UnavailableError,
  errorFromStatus,
} from '../src';
import { Jobd, jobdBinary, waitFor } from './harness';

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

/** The error a promise rejects with; fails when it resolves. */
async function refusal(promise: Promise<unknown>): Promise<JobdError> {
  const error = await promise.then(() => assert.fail('the call should fail'), (thrown: unknown) => thrown);
  assert.ok(error instanceof JobdError, String(error));
  return error;
}

test('jobd\'s refusals arrive as their reasons\' types, with their metadata', async () => {
  const jobd = await Jobd.start(['--max-payload-bytes', '1024']);
  const client = jobd.client();
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- the stubs' callbacks differ by response type
  const worker = (method: string, invoke: (metadata: Metadata, options: object, callback: any) => unknown) =>
    client.unary((metadata, options, callback) => invoke(metadata, options, callback) as never, { method: `jobd.v1.WorkerService/${method}`, retry: false });
  const claim = async (queue: string, ackTimeout = 5) => {
    const response = await worker('ClaimJobs', (m, o, cb) => client.workers.ClaimJobs(
      { claim: { queues: [queue], workerId: 'test', ackTimeout: { seconds: ackTimeout } }, maxJobs: 1 }, m, o, cb)) as { jobs: { job: { id: string }; leaseToken: string }[] };
    const claimed = response.jobs[0];
    assert.ok(claimed, 'a job was claimed');
    return { jobId: claimed.job.id, leaseToken: claimed.leaseToken };
  };
  const heartbeat = (lease: { jobId: string; leaseToken: string }) =>
    worker('Heartbeat', (m, o, cb) => client.workers.Heartbeat(lease, m, o, cb));
  try {
    const invalid = await refusal(client.submit({ queue: 'bad queue!', kind: 'k' }));
    assert.ok(invalid instanceof InvalidRequestError, invalid.reason);
    assert.match(invalid.metadata.field ?? '', /queue/);

    const large = await refusal(client.submit({ queue: 'q', kind: 'k', payload: Buffer.alloc(2048) }));
    assert.ok(large instanceof PayloadTooLargeError, large.reason);
    assert.equal(large.metadata.limit, '1024');

    await client.submit({ queue: 'q', kind: 'k', idempotencyKey: 'key-1', payload: 'a' });
    const conflict = await refusal(client.submit({ queue: 'q', kind: 'k', idempotencyKey: 'key-1', payload: 'b' }));
    assert.ok(conflict instanceof IdempotencyConflictError, conflict.reason);
    assert.equal(conflict.metadata.key, 'key-1');

    const existing = await client.submit({ queue: 'q2', kind: 'k', delayMs: 60_000 });
    const past = await refusal((async () => {
      for await (const _event of client.watch(existing.id, { afterSequence: 99 })) void _event;
    })());
    assert.ok(past instanceof PastLastEventError, past.reason);
    assert.equal(past.metadata.last_sequence, '1');

    const unknown = await refusal(heartbeat({ jobId: existing.id, leaseToken: 'no-such-token' }));
    assert.ok(unknown instanceof LeaseTokenUnknownError || unknown instanceof LeaseStaleError, unknown.reason);

    // A lease given back is stale; an unacknowledged one expires; a cancelled job says so.
    await client.submit({ queue: 'q3', kind: 'k' });
    const released = await claim('q3');
    await worker('ReleaseJob', (m, o, cb) => client.workers.ReleaseJob(released, m, o, cb));
    const stale = await refusal(heartbeat(released));
    assert.ok(stale instanceof LeaseStaleError, stale.reason);
    assert.equal(stale.metadata.state, 'QUEUED');

    const unacknowledged = await claim('q3', 1);
    await waitFor('the acknowledgement deadline to pass', async () =>
      (await client.get(unacknowledged.jobId)).state === 'JOB_STATE_QUEUED');
    const expired = await refusal(heartbeat(unacknowledged));
    assert.ok(expired instanceof LeaseExpiredError || expired instanceof LeaseStaleError, expired.reason);

    const running = await claim('q3');
    await client.cancel(running.jobId);
    const cancelled = await refusal(worker('CompleteJob', (m, o, cb) => client.workers.CompleteJob({ ...running, result: Buffer.from('x') }, m, o, cb)));
    assert.ok(cancelled instanceof JobCancelledError, cancelled.reason);

    await client.submit({ queue: 'q4', kind: 'k' });
    const done = await claim('q4');
    await worker('CompleteJob', (m, o, cb) => client.workers.CompleteJob({ ...done, result: Buffer.from('x') }, m, o, cb));
    const finished = await refusal(client.cancel(done.jobId));
    assert.ok(finished instanceof JobFinishedError, finished.reason);
    assert.equal(finished.metadata.state, 'COMPLETED');

    const missing = await refusal(client.get(existing.id.replace(/\.[^.]+$/, '.01ARZ3NDEKTSV4RRFFQ69G5FAV')));
    assert.ok(missing instanceof JobNotFoundError, missing.reason);
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
    assert.equal((denied as JobdError).reason, 'UNAUTHENTICATED');
    assert.equal((await known.submit({ queue: 'q', kind: 'k' })).created, true);
    assert.equal((await known.stats('q')).queued, 1);
    const denied2 = await refusal(known.unary((m, o, cb) => known.workers.ClaimJobs({ claim: { queues: ['q'], workerId: 'w' } }, m, o, cb), { method: 'jobd.v1.WorkerService/ClaimJobs', retry: false }));
    assert.ok(denied2 instanceof PermissionDeniedError, denied2.reason);
  } finally {
    anonymous.close();
    known.close();
    await jobd.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
