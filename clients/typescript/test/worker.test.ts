import assert from 'node:assert/strict';
import { test } from 'node:test';

import { JobCancelledError, type JobEvent } from '../src';
import { queueName, sharedJobd, waitFor } from './harness';

const shared = sharedJobd();

async function events(jobId: string): Promise<JobEvent[]> {
  const { client } = shared;
  const all: JobEvent[] = [];
  const job = await client.get(jobId);
  // A job still running has no terminal event: read its history up to its last sequence.
  for await (const event of client.watch(jobId)) {
    all.push(event);
    if (event.sequence >= job.lastSequence) break;
  }
  return all;
}

test('a cancelled job\'s handler sees the abort within one heartbeat interval', async (t) => {
  const { client } = shared;
  const queue = queueName('cancel');
  const heartbeatIntervalMs = 1000;
  const worker = shared.worker(t, { queue, leaseMs: 3000, heartbeatIntervalMs });
  let started = false;
  let abortedAt = 0;
  let reason: unknown;
  worker.handle('long', (_job, ctx) => {
    started = true;
    return new Promise((_resolve, reject) => {
      ctx.signal.addEventListener('abort', () => {
        abortedAt = Date.now();
        reason = ctx.signal.reason;
        reject(ctx.signal.reason);
      });
    });
  });
  worker.start();
  const submitted = await client.submit({ queue, kind: 'long' });
  await waitFor('the handler to start', () => started);
  const cancelledAt = Date.now();
  await client.cancel(submitted.id, 'stop it');
  await waitFor('the handler to see the abort', () => abortedAt, 5000);
  const latency = abortedAt - cancelledAt;
  assert.ok(latency <= heartbeatIntervalMs + 250, `abort after ${latency} ms, interval ${heartbeatIntervalMs} ms`);
  assert.ok(reason instanceof JobCancelledError, String(reason));
  const job = await client.get(submitted.id);
  assert.equal(job.state, 'JOB_STATE_CANCELLED');
  assert.equal(job.cancelReason, 'stop it');
});

test('a long handler keeps its lease by heartbeats, past the ack deadline and the lease', async (t) => {
  const { client } = shared;
  const queue = queueName('lease');
  const worker = shared.worker(t, { queue, leaseMs: 1500, ackTimeoutMs: 1000 });
  worker.handle('slow', async () => {
    await new Promise((resolve) => setTimeout(resolve, 3500));
    return 'kept';
  });
  worker.start();
  const submitted = await client.submit({ queue, kind: 'slow' });
  const job = await waitFor('the slow job to complete', async () => {
    const job = await client.get(submitted.id);
    return job.state === 'JOB_STATE_COMPLETED' ? job : undefined;
  });
  // One attempt, its result: neither the acknowledgement deadline nor the lease ended it.
  assert.equal(job.attempt, 1);
  assert.equal(Buffer.from(job.result).toString(), 'kept');
});

test('graceful shutdown: running jobs finish, claimed ones go back at no cost, nothing is lost', async (t) => {
  const { client } = shared;
  const queue = queueName('shutdown');
  const worker = shared.worker(t, { queue, concurrency: 4, claimWaitMs: 3000 });
  const startedIds: string[] = [];
  let finish!: () => void;
  const finishing = new Promise<void>((resolve) => (finish = resolve));
  worker.handle('work', async (job) => {
    startedIds.push(job.id);
    await finishing;
    return `done ${job.id}`;
  });
  worker.start();
  const running = await client.submitMany([1, 2].map(() => ({ queue, kind: 'work' })));
  await waitFor('two handlers running and a claim waiting for the two free slots', () => {
    const status = worker.status();
    return startedIds.length === 2 && status.running === 2 && status.claiming === 2;
  });
  const closed = worker.close();
  // Jobs handed to the claim still waiting: the closing worker must not start them.
  const claimedLate = await client.submitMany([1, 2].map(() => ({ queue, kind: 'work' })));
  await waitFor('the late jobs to be queued again', async () => {
    const jobs = await Promise.all(claimedLate.map((submitted) => client.get(submitted.id)));
    return jobs.every((job) => job.state === 'JOB_STATE_QUEUED');
  });
  assert.equal(worker.status().closing, true);
  finish();
  await closed;

  for (const submitted of running) {
    const job = await client.get(submitted.id);
    assert.equal(job.state, 'JOB_STATE_COMPLETED', `running job ${job.id}`);
    assert.equal(job.attempt, 1);
    assert.equal(job.result.toString(), `done ${job.id}`);
  }
  assert.deepEqual(startedIds.sort(), running.map((submitted) => submitted.id).sort(), 'no late job was started');
  // The waiting claim gets the first late job (jobd deals them one at a time); the worker,
  // closing, gives it back. The second stays queued: the closing worker claims no more.
  let givenBack = 0;
  for (const submitted of claimedLate) {
    const job = await client.get(submitted.id);
    assert.equal(job.state, 'JOB_STATE_QUEUED');
    assert.equal(job.attempt, 0, 'giving a job back costs no attempt');
    const types = (await events(job.id)).map((event) => event.type);
    if (types.includes('EVENT_TYPE_RELEASED')) givenBack++;
  }
  assert.ok(givenBack >= 1, 'a job the waiting claim got was given back');
  // A new worker takes them: nothing was lost.
  const successor = shared.worker(t, { queue });
  successor.handle('work', (job) => `done ${job.id}`);
  successor.start();
  for (const submitted of claimedLate) {
    const job = await waitFor('the successor to complete the job', async () => {
      const job = await client.get(submitted.id);
      return job.state === 'JOB_STATE_COMPLETED' ? job : undefined;
    });
    assert.equal(job.attempt, 1);
  }
});

test('at the shutdown deadline a handler is aborted and its job given back', async (t) => {
  const { client } = shared;
  const queue = queueName('deadline');
  const worker = shared.worker(t, { queue, shutdownTimeoutMs: 300 });
  let started = false;
  let aborted = false;
  worker.handle('stuck', (_job, ctx) => new Promise((_resolve, reject) => (started = true) && ctx.signal.addEventListener('abort', () => {
    aborted = true;
    reject(ctx.signal.reason);
  })));
  worker.start();
  const submitted = await client.submit({ queue, kind: 'stuck' });
  await waitFor('the handler to run', () => started);
  await worker.close();
  assert.equal(aborted, true);
  const job = await client.get(submitted.id);
  assert.equal(job.state, 'JOB_STATE_QUEUED');
  assert.equal(job.attempt, 0);
});
