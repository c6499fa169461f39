//! submitAndWait's engine: the submissions made in one turn of the event loop (with the same
//! trace context) share one SubmitAndWatchJobs stream, as a worker's completions share one
//! CompleteJobs, so that many callers awaiting one job each cost jobd one call and one script
//! per batch. Each caller gets its own job's outcome; a stream that breaks is resumed per job
//! with `watch` after the last sequence received.
import * as grpc from '@grpc/grpc-js';
import { status as Status } from '@grpc/grpc-js';
import { context } from '@opentelemetry/api';
import { setTimeout as sleep } from 'node:timers/promises';

import type { JobdClient, JobEvent } from './client';
import type { SubmitJobRequest } from './generated/jobd/v1/SubmitJobRequest';
import { JobFailedError, JobWasCancelledError, JobdError, toJobdError } from './errors';
import { isTerminal } from './events';
import { Bytes } from './payload';
import { stubs } from './proto';
import { backoffDelay, isRetryable } from './retry';
import { traceHeaders } from './tracing';
import { decodeWaitMessage, EVENT_CANCELLED, EVENT_COMPLETED, EVENT_FAILED, isTerminalType, type WaitEvent, type WaitMessage } from './wire';

/** Jobs in one SubmitAndWatchJobs call at most. */
const MAX_BATCH = 100;

const SUBMIT_AND_WATCH = '/jobd.v1.JobService/SubmitAndWatchJobs';

interface Waiter {
  request: SubmitJobRequest;
  resolve: (result: Bytes) => void;
  reject: (error: unknown) => void;
  signal: AbortSignal | undefined;
  jobId?: string;
  after: number;
  settled: boolean;
}

export class Waits {
  /** Waiters not sent yet, by trace context (the metadata of the call they will share). */
  private readonly pending = new Map<string, { metadata: grpc.Metadata; waiters: Waiter[] }>();
  private scheduled = false;

  constructor(private readonly client: JobdClient) {}

  wait(request: SubmitJobRequest, signal: AbortSignal | undefined): Promise<Bytes> {
    if (signal?.aborted) return Promise.reject(signal.reason);
    return new Promise((resolve, reject) => {
      const waiter: Waiter = { request, resolve, reject, signal, after: 0, settled: false };
      signal?.addEventListener('abort', () => settle(waiter, () => reject(signal.reason)), { once: true });
      // Grouped by trace context without building metadata per call: most have none.
      const headers = traceHeaders(context.active());
      const key = headers ? `${headers.traceparent} ${headers.tracestate ?? ''}` : '';
      let group = this.pending.get(key);
      if (!group) {
        const metadata = this.client.metadata();
        if (headers) {
          metadata.set('traceparent', headers.traceparent);
          if (headers.tracestate) metadata.set('tracestate', headers.tracestate);
        }
        this.pending.set(key, (group = { metadata, waiters: [] }));
      }
      group.waiters.push(waiter);
      if (!this.scheduled) {
        this.scheduled = true;
        setImmediate(() => this.send());
      }
    });
  }

  private send(): void {
    this.scheduled = false;
    for (const { metadata, waiters } of this.pending.values()) {
      for (let i = 0; i < waiters.length; i += MAX_BATCH) this.stream(metadata, waiters.slice(i, i + MAX_BATCH), 0);
    }
    this.pending.clear();
  }

  /**
   * One SubmitAndWatchJobs for `waiters`; what it leaves unfinished is retried or resumed. Read
   * with listeners rather than an async iterator, and decoded in part (wire.ts): it carries
   * three messages per job.
   */
  private stream(metadata: grpc.Metadata, waiters: Waiter[], failures: number): void {
    const live = waiters.filter((waiter) => !waiter.settled);
    if (live.length === 0) return;
    const byJob = new Map<string, Waiter>();
    let submitted = false;
    let ended = false;
    const call = this.client.jobs.makeServerStreamRequest(
      SUBMIT_AND_WATCH,
      stubs().JobService.service.SubmitAndWatchJobs.requestSerialize,
      decodeWaitMessage,
      { jobs: live.map((waiter) => waiter.request) },
      metadata.clone(),
      {},
    );
    call.on('data', (message: WaitMessage) => {
      if (message.ids) {
        submitted = true;
        message.ids.forEach((id, i) => {
          const waiter = live[i];
          if (!waiter || !id) return;
          waiter.jobId = id;
          byJob.set(id, waiter);
        });
      } else {
        const waiter = byJob.get(message.event.jobId);
        if (!waiter) return;
        waiter.after = message.event.sequence;
        if (isTerminalType(message.event.type)) deliver(waiter, message.event);
      }
    });
    const finish = (thrown?: unknown) => {
      if (ended) return;
      ended = true;
      if (thrown !== undefined && !submitted) {
        void this.unsubmitted(metadata, live, toJobdError(thrown), failures);
        return;
      }
      // jobd ends the stream with OK after the last job's terminal event; a stream that ended
      // (or broke) after the submission leaves each unfinished job to be followed alone.
      for (const waiter of live) if (!waiter.settled && waiter.jobId) void this.resume(waiter);
    };
    call.on('error', finish);
    call.on('end', () => finish());
  }

  /** The call failed before its submission's reply: it may or may not have created the jobs. */
  private async unsubmitted(metadata: grpc.Metadata, waiters: Waiter[], error: JobdError, failures: number): Promise<void> {
    if (waiters.length > 1 && !isRetryable(error) && error.code !== Status.CANCELLED) {
      // A refusal of the whole batch (one invalid job, say) wrote nothing: each job alone gets
      // its own answer.
      for (const waiter of waiters) this.stream(metadata, [waiter], failures);
      return;
    }
    // Only jobs with an idempotency key can be sent again without risking a second job.
    const again = waiters.filter((waiter) => waiter.request.idempotencyKey);
    for (const waiter of waiters) if (!waiter.request.idempotencyKey) settle(waiter, () => waiter.reject(error));
    if (again.length === 0) return;
    if (!isRetryable(error) || failures + 1 >= this.client.retry.maxAttempts) {
      for (const waiter of again) settle(waiter, () => waiter.reject(error));
      return;
    }
    this.client.retry.onRetry?.(error, failures + 1);
    await sleep(backoffDelay(this.client.retry, failures));
    this.stream(metadata, again, failures + 1);
  }

  private async resume(waiter: Waiter): Promise<void> {
    try {
      const options = waiter.signal ? { afterSequence: waiter.after, signal: waiter.signal } : { afterSequence: waiter.after };
      for await (const event of this.client.watch(waiter.jobId!, options)) {
        if (isTerminal(event)) return deliver(waiter, waitEvent(event));
      }
      // Nothing after our last sequence: that was the terminal event, and we missed only its
      // arrival. Read it again.
      const job = await this.client.get(waiter.jobId!);
      for await (const event of this.client.watch(waiter.jobId!, { afterSequence: Math.max(0, job.lastSequence - 1) })) {
        if (isTerminal(event)) return deliver(waiter, waitEvent(event));
      }
      throw new JobdError(Status.INTERNAL, 'INTERNAL', `job ${waiter.jobId} ended without a terminal event`);
    } catch (error) {
      settle(waiter, () => waiter.reject(error));
    }
  }
}

/** A terminal event read by `watch` as the stream's decoder gives it. */
function waitEvent(event: JobEvent): WaitEvent {
  const type = event.type === 'EVENT_TYPE_COMPLETED' ? EVENT_COMPLETED : event.type === 'EVENT_TYPE_FAILED' ? EVENT_FAILED : EVENT_CANCELLED;
  return { ...event, type };
}

function deliver(waiter: Waiter, event: WaitEvent): void {
  settle(waiter, () => {
    switch (event.type) {
      case EVENT_COMPLETED:
        return waiter.resolve(new Bytes(event.result));
      case EVENT_FAILED:
        return waiter.reject(new JobFailedError(event.jobId, event.attempt, event.error));
      default:
        return waiter.reject(new JobWasCancelledError(event.jobId, event.attempt, event.reason));
    }
  });
}

function settle(waiter: Waiter, action: () => void): void {
  if (waiter.settled) return;
  waiter.settled = true;
  action();
}
