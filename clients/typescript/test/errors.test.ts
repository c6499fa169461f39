import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';

import { Metadata, status as Status, type ServiceError } from '@grpc/grpc-js';
import * as protobuf from 'protobufjs';

import {
  BudgetExhaustedError,
  DeadlineExceededError,
  ERROR_CLASSES,
  IdempotencyConflictError,
  InternalError,
  InvalidRequestError,
  JobCancelledError,
  JobFinishedError,
  JobNotFoundError,
  JobdError,
  LeaseExpiredError,
  LeaseStaleError,
  LeaseTokenUnknownError,
  MessageTooLargeError,
  PastLastEventError,
  PayloadTooLargeError,
  PermissionDeniedError,
  RedisOutOfMemoryError,
  UnauthenticatedError,
  UnavailableError,
  errorFromStatus,
  toDate,
  type JobdClient,
} from '../src';
import { DUE_INDEX, Jobd, jobKey, jobdBinary, queueName, sharedJobd, waitFor } from './harness';

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

// Every reason of errors.proto, provoked from a real jobd and Redis, arrives as its class with
// the metadata the proto documents; UNAUTHENTICATED and PERMISSION_DENIED below,
// REDIS_UNAVAILABLE and SHUTTING_DOWN in resilience.test.ts.
const shared = sharedJobd(['--max-payload-bytes', '1024']);

/** The error a promise rejects with, as jobd sent it (with its ErrorInfo); fails when it resolves. */
async function refusal(promise: Promise<unknown>): Promise<JobdError> {
  const error = await promise.then(() => assert.fail('the call should fail'), (thrown: unknown) => thrown);
  assert.ok(error instanceof JobdError, String(error));
  const details = (error.cause as ServiceError | undefined)?.metadata?.get('grpc-status-details-bin') ?? [];
  assert.ok(details.length > 0, `jobd's status, not one made here: ${error.name} ${error.message}`);
  return error;
}

interface Lease { jobId: string; leaseToken: string }
// eslint-disable-next-line @typescript-eslint/no-explicit-any -- the stubs' callbacks differ by response type
type Invoke = (metadata: Metadata, options: object, callback: any) => unknown;

/** One WorkerService call through the client's own plumbing (typed errors), not retried. */
function workerCall(client: JobdClient, method: string, invoke: Invoke): Promise<unknown> {
  return client.unary((metadata, options, callback) => invoke(metadata, options, callback) as never, { method: `jobd.v1.WorkerService/${method}`, retry: false });
}

/** Claims up to `maxJobs` jobs of `queue` (1 s wait), with the ack timeout and lease given in seconds. */
async function claim(client: JobdClient, queue: string, { ackTimeout = 5, lease = 60, maxJobs = 1 } = {}): Promise<Lease[]> {
  const response = await workerCall(client, 'ClaimJobs', (m, o, cb) => client.workers.ClaimJobs({
    claim: { queues: [queue], workerId: 'test', wait: { seconds: 1 }, lease: { seconds: lease }, ackTimeout: { seconds: ackTimeout } },
    maxJobs,
  }, m, o, cb)) as { jobs: { job: { id: string }; leaseToken: string }[] };
  assert.equal(response.jobs.length, maxJobs, 'the jobs were claimed');
  return response.jobs.map((claimed) => ({ jobId: claimed.job.id, leaseToken: claimed.leaseToken }));
}

function heartbeat(client: JobdClient, lease: Lease): Promise<unknown> {
  return workerCall(client, 'Heartbeat', (m, o, cb) => client.workers.Heartbeat(lease, m, o, cb));
}

function complete(client: JobdClient, lease: Lease): Promise<unknown> {
  return workerCall(client, 'CompleteJob', (m, o, cb) => client.workers.CompleteJob({ ...lease, result: Buffer.from('x') }, m, o, cb));
}

test('jobd\'s refusals arrive as their reasons\' types, with their metadata', async () => {
  const { client } = shared;
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

  const unknown = await refusal(heartbeat(client, { jobId: existing.id, leaseToken: 'no-such-token' }));
  assert.ok(unknown instanceof LeaseTokenUnknownError, unknown.reason);

  // A lease given back is stale; a cancelled job says so.
  await client.submit({ queue: 'q3', kind: 'k' });
  const [released] = await claim(client, 'q3');
  await workerCall(client, 'ReleaseJob', (m, o, cb) => client.workers.ReleaseJob(released!, m, o, cb));
  const stale = await refusal(heartbeat(client, released!));
  assert.ok(stale instanceof LeaseStaleError, stale.reason);
  assert.equal(stale.metadata.state, 'QUEUED');

  const [running] = await claim(client, 'q3');
  await client.cancel(running!.jobId);
  const cancelled = await refusal(complete(client, running!));
  assert.ok(cancelled instanceof JobCancelledError, cancelled.reason);

  await client.submit({ queue: 'q4', kind: 'k' });
  const [done] = await claim(client, 'q4');
  await complete(client, done!);
  const finished = await refusal(client.cancel(done!.jobId));
  assert.ok(finished instanceof JobFinishedError, finished.reason);
  assert.equal(finished.metadata.state, 'COMPLETED');

  const missing = await refusal(client.get(existing.id.replace(/\.[^.]+$/, '.01ARZ3NDEKTSV4RRFFQ69G5FAV')));
  assert.ok(missing instanceof JobNotFoundError, missing.reason);
});

test('a claim past its deadline: LeaseExpiredError, naming the deadline', async () => {
  const { jobd, client } = shared;
  const queue = queueName('expiry');
  await client.submitMany([1, 2].map(() => ({ queue, kind: 'k' })));
  const [unacked, acked] = await claim(client, queue, { ackTimeout: 2, lease: 2, maxJobs: 2 });
  await heartbeat(client, acked!); // acknowledged: its lease runs out instead
  // jobd's sweeper ends a claim within moments of its deadline (LEASE_STALE from then on);
  // LEASE_EXPIRED answers in between. The queue's entry in the due index, moved to +inf once
  // the claim has written its deadline there, keeps the sweeper away until the test is done.
  await waitFor('the claim\'s deadline in the due index', () => !['', 'inf'].includes(jobd.redis.command('ZSCORE', DUE_INDEX, queue)), 5000);
  jobd.redis.command('ZADD', DUE_INDEX, 'XX', '+inf', queue);
  const ends = Math.max(toDate((await client.get(unacked!.jobId)).ackDeadline)!.getTime(), toDate((await client.get(acked!.jobId)).leaseExpiresAt)!.getTime());
  await waitFor('the deadlines to pass', () => Date.now() > ends);

  const ack = await refusal(heartbeat(client, unacked!));
  assert.ok(ack instanceof LeaseExpiredError, ack.reason);
  assert.equal(ack.code, Status.FAILED_PRECONDITION);
  assert.deepEqual(ack.metadata, { deadline: 'ack' });
  const lease = await refusal(complete(client, acked!));
  assert.ok(lease instanceof LeaseExpiredError, lease.reason);
  assert.deepEqual(lease.metadata, { deadline: 'lease' });

  jobd.redis.command('ZADD', DUE_INDEX, 'XX', '0', queue); // the sweeper's turn
  await waitFor('the sweeper to end both claims', async () =>
    (await Promise.all([unacked!, acked!].map((held) => client.get(held.jobId)))).every((job) => job.state !== 'JOB_STATE_RUNNING'));
});

test('a full Redis: RedisOutOfMemoryError, and nothing written', async () => {
  const { jobd } = shared;
  const client = jobd.client({ retry: { maxAttempts: 1 } });
  const queue = queueName('full');
  jobd.redis.command('CONFIG', 'SET', 'maxmemory-policy', 'noeviction');
  jobd.redis.command('CONFIG', 'SET', 'maxmemory', '1');
  try {
    const full = await refusal(client.submit({ queue, kind: 'k' }));
    assert.ok(full instanceof RedisOutOfMemoryError, full.reason);
    assert.equal(full.code, Status.UNAVAILABLE, 'retried like any UNAVAILABLE');
    assert.deepEqual(full.metadata, {});
  } finally {
    jobd.redis.command('CONFIG', 'SET', 'maxmemory', '0');
  }
  try {
    assert.equal((await client.stats(queue)).queued, 0, 'the refused submission wrote nothing');
    await client.submit({ queue, kind: 'k' });
  } finally {
    client.close();
  }
});

test('a spent budget: BudgetExhaustedError, naming the setting and its limit', async () => {
  const narrow = await Jobd.start(['--max-watch-streams', '1']);
  const client = narrow.client();
  try {
    const submitted = await client.submit({ queue: 'q', kind: 'k' });
    const first = client.watch(submitted.id);
    assert.equal((await first.next()).value?.sequence, 1, 'the one stream, open and following');
    const spent = await refusal(client.watch(submitted.id).next());
    assert.ok(spent instanceof BudgetExhaustedError, spent.reason);
    assert.equal(spent.code, Status.RESOURCE_EXHAUSTED);
    assert.deepEqual(spent.metadata, { budget: 'max-watch-streams', limit: '1' });
    await first.return();
  } finally {
    client.close();
    await narrow.stop();
  }
});

test('a request over its method\'s limit: MessageTooLargeError', async () => {
  const { client } = shared;
  const large = await refusal(client.get(`q.${'x'.repeat(70_000)}`));
  assert.ok(large instanceof MessageTooLargeError, large.reason);
  assert.equal(large.code, Status.RESOURCE_EXHAUSTED);
  assert.deepEqual(large.metadata, { method: 'jobd.v1.JobService/GetJob', limit: String(64 * 1024) });
});

test('a deadline that passes inside jobd: DeadlineExceededError', async () => {
  const { client } = shared;
  // grpc-js ends a call at its own deadline locally, at the instant jobd would, and without
  // ErrorInfo. This call has no deadline of grpc-js's and sends grpc-timeout itself, so the
  // status that arrives is jobd's.
  const started = Date.now();
  const late = await refusal(workerCall(client, 'ClaimJobs', (metadata, _options, callback) => {
    metadata.set('grpc-timeout', '300m');
    return client.workers.ClaimJobs({ claim: { queues: [queueName('idle')], workerId: 'test', wait: { seconds: 10 } }, maxJobs: 1 }, metadata, {}, callback);
  }));
  assert.ok(late instanceof DeadlineExceededError, late.reason);
  assert.equal(late.code, Status.DEADLINE_EXCEEDED);
  assert.deepEqual(late.metadata, {});
  assert.ok(Date.now() - started >= 300, `after ${Date.now() - started} ms`);
});

test('a corrupt job: InternalError, its cause in jobd\'s log only', async () => {
  const { jobd, client } = shared;
  const submitted = await client.submit({ queue: queueName('corrupt'), kind: 'k' });
  jobd.redis.command('HSET', jobKey(submitted.id), 'state', 'no-such-state');
  const broken = await refusal(client.get(submitted.id));
  assert.ok(broken instanceof InternalError, broken.reason);
  assert.equal(broken.code, Status.INTERNAL);
  assert.deepEqual(broken.metadata, {});
  assert.equal(broken.message, 'internal error');
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
