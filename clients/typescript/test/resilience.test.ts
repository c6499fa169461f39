import assert from 'node:assert/strict';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import { JobdError, RedisUnavailableError, ShuttingDownError, Worker, type JobEvent } from '../src';
import { Proxy, queueName, sharedJobd, waitFor } from './harness';

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
