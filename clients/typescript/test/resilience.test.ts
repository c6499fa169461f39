import assert from 'node:assert/strict';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import { JobdError, RedisUnavailableError, ShuttingDownError, Worker, type JobEvent } from '../src';
import { jobKey, Proxy, queueName, sharedJobd, waitFor } from './harness';

/** The errors the shared client retried (or resumed a stream after), in order. */
const retries: JobdError[] = [];
// A short Redis command timeout, so that a stopped Redis gives UNAVAILABLE quickly.
const shared = sharedJobd(['--redis-command-timeout', '300ms', '--shutdown-timeout', '2s'], {
  retry: { onRetry: (error) => retries.push(error) },
});

test('watch survives a jobd restart mid-stream, with no gap and no duplicate', async () => {
  const { jobd, client } = shared;
  const queue = queueName('restart');
  // Its heartbeats fail while jobd restarts, as they should; not worth a log line here.
  const worker = new Worker(client, { queue, leaseMs: 10_000, claimWaitMs: 1000, handleSignals: false, logger: { warn: () => {} } });
  let step = 0;
  let stop = false;
  worker.handle('ticker', async (_job, ctx) => {
    while (!stop) {
      await ctx.progress(++step, `step ${step}`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    return 'ticked';
  });
  const submitted = await client.submit({ queue, kind: 'ticker' });
  worker.start();
  const events: JobEvent[] = [];
  const watching = (async () => {
    for await (const event of client.watch(submitted.id)) events.push(event);
  })();
  try {
    await waitFor('progress before the restart', () => events.length >= 5);
    const before = events.length;
    retries.length = 0;
    await jobd.restart();
    await waitFor('progress after the restart', () => events.length >= before + 5, 20_000);
    stop = true;
    await watching;
    assert.ok(retries.length > 0, 'the stream broke and was resumed');
    const reasons = retries.map((error) => error.reason).join(' ');
    const shutdown = retries.find((error) => error.reason === 'SHUTTING_DOWN');
    assert.ok(shutdown, `jobd ended the stream as it shut down: ${reasons}`);
    assert.ok(shutdown instanceof ShuttingDownError, shutdown.name);
    assert.equal(shutdown.code, 14, 'UNAVAILABLE');
    assert.deepEqual(shutdown.metadata, {});
    assert.deepEqual(events.map((event) => event.sequence), events.map((_event, i) => i + 1), 'every sequence once, in order');
    assert.equal(events.at(-1)?.type, 'EVENT_TYPE_COMPLETED');
    assert.equal(events.at(-1)?.result.toString(), 'ticked');
  } finally {
    stop = true;
    await worker.close();
  }
});

test('calls retry on UNAVAILABLE while Redis is stopped, and a retried submission is made once', async () => {
  const { jobd, client } = shared;
  const queue = queueName('outage');
  const noRetry = jobd.client({ retry: { maxAttempts: 1 } });
  let submitting: Promise<{ created: boolean }> | undefined;
  let reading: Promise<unknown> = Promise.resolve();
  try {
    jobd.redis.pause();
    try {
      const refused = await noRetry.stats(queue).then(() => assert.fail('should fail'), (error: unknown) => error);
      assert.ok(refused instanceof JobdError, String(refused));
      assert.equal(refused.code, 14, 'UNAVAILABLE');
      assert.ok(refused instanceof RedisUnavailableError, refused.reason);

      retries.length = 0;
      submitting = client.submit({ queue, kind: 'k', payload: 'p' });
      reading = client.stats(queue);
      await waitFor('a retry of each call', () => retries.length >= 2, 10_000);
    } finally {
      jobd.redis.resume();
    }
  } finally {
    noRetry.close();
  }
  const [submitted] = await Promise.all([submitting, reading]);
  // The first attempt may have reached Redis and run once Redis resumed: the retry, with the
  // same generated key, then finds that job (created false). Either way there is one job.
  assert.ok(submitted, 'the submission succeeded');
  const stats = await client.stats(queue);
  assert.equal(stats.queued, 1, 'the retried submission made one job');
});

test('a quiet watch survives cuts spread over its life, each past watchResumeMs', async () => {
  const { jobd, client } = shared;
  const proxy = await Proxy.start(jobd.port);
  // 0.3 s of consecutive failures at most: cuts 0.5 s apart, with no event between, would
  // spend it at the second were each resumed stream, open its while, not a fresh start.
  const through = jobd.client({ address: proxy.address, retry: { initialBackoffMs: 50, maxBackoffMs: 100 }, watchResumeMs: 300 });
  try {
    const submitted = await client.submit({ queue: queueName('cuts'), kind: 'k' });
    const events: JobEvent[] = [];
    let ended: unknown;
    const watching = (async () => {
      for await (const event of through.watch(submitted.id)) events.push(event);
    })().catch((error: unknown) => {
      ended = error;
    });
    await waitFor('the first event', () => events.length === 1);
    for (let cut = 0; cut < 3; cut++) {
      const answered = proxy.answered;
      proxy.cut();
      await waitFor('the watch to resume', () => {
        assert.equal(ended, undefined, `the watch ended after cut ${cut + 1}`);
        return proxy.answered > answered;
      });
      // The resumed stream lives past maxBackoffMs, and the next cut comes past watchResumeMs.
      await sleep(500);
    }
    await client.cancel(submitted.id, 'done');
    await watching;
    assert.equal(ended, undefined, String(ended));
    assert.deepEqual(events.map((event) => [event.sequence, event.type]), [[1, 'EVENT_TYPE_QUEUED'], [2, 'EVENT_TYPE_CANCELLED']]);
  } finally {
    through.close();
    await proxy.close();
  }
});

test('a watch resumes for watchResumeMs of failures in a row, then throws the transport\'s error', async () => {
  const { jobd, client } = shared;
  const proxy = await Proxy.start(jobd.port);
  // Attempts every 0.1 s at most: only the 3 s budget bounds the resumes.
  const budgetMs = 3000;
  const through = jobd.client({ address: proxy.address, retry: { initialBackoffMs: 50, maxBackoffMs: 100 }, watchResumeMs: budgetMs });
  try {
    const queue = queueName('budget');
    const submitted = await client.submit({ queue, kind: 'k' });
    const events: JobEvent[] = [];
    let ended: unknown;
    let endedAt = 0;
    const watching = (async () => {
      for await (const event of through.watch(submitted.id)) events.push(event);
    })().catch((error: unknown) => {
      ended = error;
      endedAt = Date.now();
    });
    await waitFor('the first event', () => events.length === 1);
    // 1.5 s of refused connections: failed attempts in a row, within the budget.
    const answered = proxy.answered;
    await proxy.close();
    await sleep(1500);
    assert.equal(ended, undefined, `the watch gave up within its budget: ${String(ended)}`);
    await proxy.open();
    await waitFor('the watch to resume', () => proxy.answered > answered);
    await client.unary(
      (m, o, cb) => client.workers.ClaimJobs({ claim: { queues: [queue], workerId: 'w', wait: { seconds: 1 }, lease: { seconds: 120 }, ackTimeout: { seconds: 60 } }, maxJobs: 1 }, m, o, cb),
      { method: 'jobd.v1.WorkerService/ClaimJobs', retry: false },
    );
    await waitFor('the second event', () => events.length === 2);
    // An event started the budget afresh; refused for good, the watch gives up once its
    // failures have lasted 3 s, with the transport's error.
    const closedAt = Date.now();
    await proxy.close();
    await watching;
    const elapsed = endedAt - closedAt;
    const error = ended as unknown;
    assert.ok(error instanceof JobdError, String(error));
    assert.equal(error.code, 14, `UNAVAILABLE: ${error.message}`);
    assert.ok(elapsed >= budgetMs && elapsed < 2 * budgetMs, `gave up after ${elapsed} ms`);
    assert.deepEqual(events.map((event) => [event.sequence, event.type]), [[1, 'EVENT_TYPE_QUEUED'], [2, 'EVENT_TYPE_STARTED']]);
  } finally {
    through.close();
    await proxy.close();
  }
});

test('a watch that jobd keeps ending with OK on an unfinished log spends its budget', async () => {
  const { jobd, client } = shared;
  const resumed: JobdError[] = [];
  const retry = { initialBackoffMs: 50, maxBackoffMs: 100, onRetry: (error: JobdError) => resumed.push(error) };
  const brief = jobd.client({ retry, watchResumeMs: 500 });
  try {
    const submitted = await client.submit({ queue: queueName('ends-ok'), kind: 'k' });
    await client.cancel(submitted.id);
    // The log now claims an event 3 that is not there: jobd ends every watch after 2 with OK
    // (the job is finished), while GetJob says an event may follow 2.
    assert.match(jobd.redis.command('HSET', jobKey(submitted.id), 'seq', '3'), /^\(integer\)|^\d/);
    const started = Date.now();
    const ended = await (async () => {
      for await (const event of brief.watch(submitted.id, { afterSequence: 2 })) assert.fail(`no event: ${event.type}`);
    })().then(() => assert.fail('the watch ended without an error'), (error: unknown) => error);
    const elapsed = Date.now() - started;
    assert.ok(ended instanceof JobdError, String(ended));
    assert.equal(ended.code, 14, 'UNAVAILABLE');
    assert.match(ended.message, /ended early/);
    // The budget runs out, however many attempts it took (maxAttempts does not bound a watch).
    assert.ok(elapsed >= 500, `gave up after ${elapsed} ms`);
    assert.ok(resumed.length > brief.retry.maxAttempts, `${resumed.length} resumes`);
  } finally {
    brief.close();
  }
});

test('a watch broken with CANCELLED resumes, unless its signal aborted', async () => {
  const { jobd, client } = shared;
  const proxy = await Proxy.start(jobd.port);
  const resumed: JobdError[] = [];
  const through = jobd.client({ address: proxy.address, retry: { onRetry: (error) => resumed.push(error) } });
  try {
    const submitted = await client.submit({ queue: queueName('reset'), kind: 'k' });
    // The first stream ends with RST_STREAM(CANCEL) right after its response headers.
    proxy.cancelNextCall();
    const events: JobEvent[] = [];
    const watching = (async () => {
      for await (const event of through.watch(submitted.id)) events.push(event);
    })();
    await waitFor('the first event', () => events.length === 1);
    assert.deepEqual(resumed.map((error) => error.code), [1], 'resumed once, after CANCELLED');
    assert.equal(proxy.answered, 2, 'the cancelled call, then the resumed one');
    await client.cancel(submitted.id, 'done');
    await watching;
    assert.deepEqual(events.map((event) => [event.sequence, event.type]), [[1, 'EVENT_TYPE_QUEUED'], [2, 'EVENT_TYPE_CANCELLED']]);

    // The caller's abort cancels the call too: the watch throws its reason, and no resume.
    const other = await client.submit({ queue: queueName('abort'), kind: 'k' });
    const controller = new AbortController();
    const seen: JobEvent[] = [];
    const aborted = (async () => {
      for await (const event of through.watch(other.id, { signal: controller.signal })) seen.push(event);
    })().then(() => assert.fail('the watch ended without its abort'), (error: unknown) => error);
    await waitFor('the first event', () => seen.length === 1);
    resumed.length = 0;
    controller.abort(new Error('stop'));
    assert.equal((await aborted as Error).message, 'stop');
    assert.deepEqual(resumed, [], 'no resume after an abort');
  } finally {
    through.close();
    await proxy.close();
  }
});

test('submitAndWait sends its keyed submission again when its stream breaks before the reply', async (t) => {
  const { jobd, client } = shared;
  const proxy = await Proxy.start(jobd.port);
  const through = jobd.client({ address: proxy.address });
  try {
    const queue = queueName('unreplied');
    await through.stats(queue); // the connection through the proxy is up
    proxy.holdReplies = true;
    const waiting = through.submitAndWait({ queue, kind: 'k' });
    const outcome = waiting.then((result) => result.text(), (error: unknown) => error);
    await waitFor('the job to be written', async () => (await client.stats(queue)).queued === 1);
    // Written, its reply lost on the way: the connection breaks under the call.
    proxy.holdReplies = false;
    proxy.cut();
    const worker = shared.worker(t, { queue });
    worker.handle('k', async () => 'done');
    worker.start();
    assert.equal(await outcome, 'done');
    const stats = await client.stats(queue);
    assert.deepEqual([stats.queued, stats.completed], [0, 1], 'sent again with its key: one job');
  } finally {
    through.close();
    await proxy.close();
  }
});
