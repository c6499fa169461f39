import assert from 'node:assert/strict';
import { before, test } from 'node:test';

import { context, trace } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';

import { queueName, sharedJobd, waitFor } from './harness';

const exporter = new InMemorySpanExporter();

before(() => {
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  trace.setGlobalTracerProvider(new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] }));
});

const shared = sharedJobd();

test('a handler runs in a span whose parent is the submitter\'s trace context', async (t) => {
  const { client } = shared;
  const queue = queueName('trace');
  const worker = shared.worker(t, { queue });
  let handlerTraceId: string | undefined;
  worker.handle('traced', () => {
    handlerTraceId = trace.getActiveSpan()?.spanContext().traceId;
    return 'ok';
  });
  worker.start();
  const tracer = trace.getTracer('test');
  const { submitTrace, jobId } = await tracer.startActiveSpan('submitter', async (span) => {
    const submitted = await client.submit({ queue, kind: 'traced' });
    span.end();
    return { submitTrace: span.spanContext().traceId, jobId: submitted.id };
  });
  await waitFor('the job to complete', async () => (await client.get(jobId)).state === 'JOB_STATE_COMPLETED');
  const job = await client.get(jobId);
  const [, traceId, parentSpanId] = (job.traceContext.traceparent ?? '').split('-');
  assert.equal(traceId, submitTrace, 'the job carries the submitter\'s trace');

  const handlerSpan = await waitFor('the handler span', () =>
    exporter.getFinishedSpans().find((span) => span.name === 'process traced'));
  assert.equal(handlerSpan.spanContext().traceId, submitTrace);
  assert.equal(handlerSpan.parentSpanContext?.spanId, parentSpanId, 'the job\'s trace context is the parent');
  assert.equal(handlerSpan.attributes['jobd.job.id'], jobId);
  assert.equal(handlerTraceId, submitTrace, 'the handler runs with its span active');
});
