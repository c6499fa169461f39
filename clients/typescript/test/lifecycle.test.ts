import assert from 'node:assert/strict';
import { test } from 'node:test';

import { JobFailedError, JobNotFoundError, JobWasCancelledError, JobdError, NonRetryableError, type JobEvent } from '../src';
import { queueName, sharedJobd, waitFor } from './harness';

const shared = sharedJobd();

test('a job goes from submission to its result through a worker', async (t) => {
  const { client } = shared;
  const queue = queueName('life');
  const worker = shared.worker(t, { queue, concurrency: 4 });
  const seen: { kind: string; payload: unknown; attempt: number }[] = [];
  worker.handle('add', async (job) => {
    const { a, b } = job.json<{ a: number; b: number }>();
    seen.push({ kind: job.kind, payload: job.json(), attempt: job.attempt });
    return { sum: a + b };
  });
  worker.handle('echo', (job) => job.text().toUpperCase());
  worker.handle('bytes', () => Buffer.from([1, 2, 3]));
  worker.start();
  const result = await client.submitAndWait({ queue, kind: 'add', payload: { a: 2, b: 3 } });
  assert.deepEqual(result.json(), { sum: 5 });
  assert.deepEqual(seen, [{ kind: 'add', payload: { a: 2, b: 3 }, attempt: 1 }]);
  assert.equal((await client.submitAndWait({ queue, kind: 'echo', payload: 'hi' })).text(), 'HI');
  assert.deepEqual([...(await client.submitAndWait({ queue, kind: 'bytes' })).bytes], [1, 2, 3]);

  const many = await client.submitMany([1, 2, 3].map((n) => ({ queue, kind: 'add', payload: { a: n, b: n } })));
  assert.equal(many.length, 3);
  assert.ok(many.every((submitted) => submitted.created));
  const finished = await Promise.all(many.map((submitted) => waitFor('the job to complete', async () => {
    const job = await client.get(submitted.id);
    return job.state === 'JOB_STATE_COMPLETED' ? job : undefined;
  })));
  assert.deepEqual(finished.map((job) => JSON.parse(job.result.toString())), [{ sum: 2 }, { sum: 4 }, { sum: 6 }]);
  assert.deepEqual(finished.map((job) => job.attempt), [1, 1, 1]);
});

test('a thrown error fails the attempt; a NonRetryableError fails the job for good', async (t) => {
  const { client } = shared;
  const queue = queueName('fail');
  const worker = shared.worker(t, { queue });
  worker.handle('flaky', (job) => {
    if (job.attempt < 2) throw new Error('first attempt fails');
    return 'second attempt works';
  });
  worker.handle('broken', () => {
    throw new NonRetryableError('cannot ever work');
  });
  worker.start();
  const flaky = await client.submitAndWait({ queue, kind: 'flaky', maxAttempts: 2, backoff: { initialMs: 10 } });
  assert.equal(flaky.text(), 'second attempt works');

  const failure = await client.submitAndWait({ queue, kind: 'broken', maxAttempts: 5 }).then(
    () => assert.fail('the job should fail'),
    (error: unknown) => error,
  );
  assert.ok(failure instanceof JobFailedError, String(failure));
  assert.equal(failure.attempt, 1, 'retryable: false spends no further attempt');
  assert.match(failure.error, /cannot ever work/);
  assert.equal((await client.get(failure.jobId)).state, 'JOB_STATE_FAILED');
});

test('watch follows a job to its terminal event, progress included', async (t) => {
  const { client } = shared;
  const queue = queueName('watch');
  const worker = shared.worker(t, { queue });
  worker.handle('steps', async (_job, ctx) => {
    await ctx.progress(50, 'half way');
    return 'done';
  });
  const submitted = await client.submit({ queue, kind: 'steps' });
  worker.start();
  const events: JobEvent[] = [];
  for await (const event of client.watch(submitted.id)) events.push(event);
  assert.deepEqual(events.map((event) => event.type), [
    'EVENT_TYPE_QUEUED', 'EVENT_TYPE_STARTED', 'EVENT_TYPE_PROGRESS', 'EVENT_TYPE_COMPLETED',
  ]);
  assert.deepEqual(events.map((event) => event.sequence), [1, 2, 3, 4]);
  assert.equal(events[2]?.progress?.value, 50);
  assert.equal(events[2]?.progress?.message, 'half way');
  assert.equal(events[3]?.result.toString(), 'done');
  // From a sequence on: the rest only.
  const rest: number[] = [];
  for await (const event of client.watch(submitted.id, { afterSequence: 2 })) rest.push(event.sequence);
  assert.deepEqual(rest, [3, 4]);
  // From its last sequence, a finished job's watch ends at once with nothing, and no error.
  const started = Date.now();
  const none: number[] = [];
  for await (const event of client.watch(submitted.id, { afterSequence: 4 })) none.push(event.sequence);
  assert.deepEqual(none, []);
  assert.ok(Date.now() - started < 2_000, `ended after ${Date.now() - started} ms`);
});

test('cancel, get and submitAndWait of a cancelled job', async () => {
  const { client } = shared;
  const queue = queueName('cancel');
  const submitted = await client.submit({ queue, kind: 'never', delayMs: 60_000 });
  assert.equal(submitted.job.state, 'JOB_STATE_SCHEDULED');
  const first = await client.submit({ queue, kind: 'never', idempotencyKey: 'k1', delayMs: 60_000 });
  const again = await client.submit({ queue, kind: 'never', idempotencyKey: 'k1', delayMs: 60_000 });
  assert.equal(again.created, false, 'the same key and request finds the job');
  assert.equal(again.id, first.id);
  // Waiting on the same key follows the existing job (before or after its cancellation).
  // Its outcome is taken at once: it may come before the cancellation's reply.
  const waiting = client.submitAndWait({ queue, kind: 'never', idempotencyKey: 'k1', delayMs: 60_000 })
    .then(() => assert.fail('should throw'), (thrown: unknown) => thrown);
  const cancelled = await client.cancel(again.id, 'no longer wanted');
  assert.equal(cancelled.state, 'JOB_STATE_CANCELLED');
  const error = await waiting;
  assert.ok(error instanceof JobWasCancelledError, String(error));
  assert.equal(error.reason, 'no longer wanted');

  const job = await client.get(submitted.id);
  assert.equal(job.id, submitted.id);
  const unknownId = submitted.id.replace(/\.[^.]+$/, '.01ARZ3NDEKTSV4RRFFQ69G5FAV');
  const missing = await client.get(unknownId).then(() => assert.fail('should throw'), (thrown: unknown) => thrown);
  assert.ok(missing instanceof JobNotFoundError, String(missing));
  assert.equal((missing as JobdError).reason, 'JOB_NOT_FOUND');
});
