import assert from 'node:assert/strict';
import { test } from 'node:test';

import type { EventType } from '../src/generated/jobd/v1/EventType';
import type { JobEvent } from '../src/generated/jobd/v1/JobEvent';
import { stubs } from '../src/proto';
import { decodeClaims, decodeCompletions, decodeWaitMessage, EVENT_CANCELLED, EVENT_COMPLETED, EVENT_FAILED } from '../src/wire';

// wire.ts reads SubmitAndWatchJobs' messages by field number: these encode them from the protos
// (the stub's serializer) and compare.
const method = stubs().JobService.service.SubmitAndWatchJobs;
const time = { seconds: 1_765_000_000, nanos: 5 };

test('a submitted message gives the jobs ids in request order, empty for a result without a job', () => {
  const bytes = method.responseSerialize({
    submitted: {
      results: [
        { job: { id: 'q.01A', queue: 'q', kind: 'k', state: 'JOB_STATE_QUEUED', createdAt: time, labels: { a: 'b' } }, created: true },
        {},
        { job: { id: 'q.01B', payload: Buffer.from('x') }, created: false },
      ],
    },
  });
  assert.deepEqual(decodeWaitMessage(bytes), { ids: ['q.01A', '', 'q.01B'] });
});

test('an event gives what ends a wait, and the EventType numbers are the protos', () => {
  const cases: { type: EventType; number: number; result?: Buffer; error?: string; reason?: string; workerId?: string }[] = [
    { type: 'EVENT_TYPE_COMPLETED', number: EVENT_COMPLETED, result: Buffer.from('"done"') },
    { type: 'EVENT_TYPE_FAILED', number: EVENT_FAILED, error: 'boom' },
    { type: 'EVENT_TYPE_CANCELLED', number: EVENT_CANCELLED, reason: 'enough' },
    { type: 'EVENT_TYPE_STARTED', number: 2, workerId: 'w' },
  ];
  for (const { type, number, ...fields } of cases) {
    const event: JobEvent = { jobId: 'q.01A', sequence: 2 ** 40 + 3, type, time, attempt: 2, runAt: time, progress: { value: 5, message: 'm' }, ...fields };
    const decoded = decodeWaitMessage(method.responseSerialize({ event }));
    assert.deepEqual(decoded, {
      event: {
        jobId: 'q.01A',
        sequence: 2 ** 40 + 3,
        type: number,
        attempt: 2,
        result: fields.result ?? Buffer.alloc(0),
        error: fields.error ?? '',
        reason: fields.reason ?? '',
      },
    });
    assert.equal((method.responseDeserialize(method.responseSerialize({ event })) as { event: { type: string } }).event.type, type);
  }
});

test('claimed jobs give the fields the worker reads, and the whole job as the stub decodes it', () => {
  const job = {
    id: 'q.01A', queue: 'q', kind: 'k', state: 'JOB_STATE_RUNNING' as const, attempt: 2, payload: Buffer.from('{"a":1}'),
    labels: { team: 'x', env: 'y' }, createdAt: time, lastSequence: 2 ** 33, maxAttempts: 5, priority: -3,
    workerId: 'w', backoff: { multiplier: 2 }, traceContext: { traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01' },
  };
  const claimed = { job, leaseToken: 'token', leaseExpiresAt: time, ackDeadline: time };
  const complete = stubs().WorkerService.service.CompleteJobs;
  const bytes = complete.responseSerialize({ results: [{ code: 0 }, { code: 9, message: 'lease lost', reason: 'LEASE_EXPIRED' }], next: [claimed, { leaseToken: 'no job' }] });
  const decoded = decodeCompletions(bytes);
  assert.deepEqual(decoded.results, [{ code: 0, message: '' }, { code: 9, message: 'lease lost' }]);
  assert.equal(decoded.next.length, 1);
  const [claim] = decoded.next;
  const expected = (complete.responseDeserialize(bytes) as { next: { job: unknown }[] }).next[0]!.job;
  assert.equal(claim!.leaseToken, 'token');
  const { id, queue, kind, attempt, payload, labels, maxAttempts, traceContext } = claim!.job;
  assert.deepEqual({ id, queue, kind, attempt, payload, labels, maxAttempts, traceContext },
    { id: job.id, queue: job.queue, kind: job.kind, attempt: 2, payload: job.payload, labels: job.labels, maxAttempts: 5, traceContext: job.traceContext });
  assert.deepEqual(claim!.job.raw, expected);

  const claims = stubs().WorkerService.service.ClaimJobs;
  assert.deepEqual(decodeClaims(claims.responseSerialize({ jobs: [claimed] })).jobs.map((c) => [c.leaseToken, c.job.id]), [['token', 'q.01A']]);
});
