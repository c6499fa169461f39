//! The worker runtime: handlers by kind, `concurrency` slots, and the worker protocol of
//! docs/api.md under the hood.
//!
//! - Claims with ClaimJobs for the free slots (a long poll of `claimWaitMs`); handlers that end
//!   in the same turn of the event loop are completed together by one CompleteJobs, whose `next`
//!   claims the slots they freed, so a plain handler gets batching.
//! - Heartbeats every `heartbeatIntervalMs` (a third of the lease by default, less up to 20%
//!   jitter), the first one before the acknowledgement deadline. A cancelled job is heard of at
//!   the next heartbeat: `ctx.signal` aborts within one heartbeat interval.
//! - Shutdown (`close()`, or SIGTERM/SIGINT under `run()`): stop claiming, let running handlers
//!   finish until `shutdownTimeoutMs` (then abort them and give their jobs back), and give back
//!   at no cost (ReleaseJob) every job a claim still brings. A pending claim is never cancelled:
//!   it ends by its wait (jobs handed to a cancelled claim could go back only at their
//!   acknowledgement deadline).
import { status as Status } from '@grpc/grpc-js';
import { SpanKind, SpanStatusCode, context, isSpanContextValid, trace } from '@opentelemetry/api';
import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';

import type { JobdClient, Job } from './client';
import { duration } from './client';
import type { ClaimJobsRequest } from './generated/jobd/v1/ClaimJobsRequest';
import type { Completion } from './generated/jobd/v1/Completion';
import type { HeartbeatRequest } from './generated/jobd/v1/HeartbeatRequest';
import type { HeartbeatResponse__Output } from './generated/jobd/v1/HeartbeatResponse';
import { JobCancelledError, JobdError, NonRetryableError, toJobdError } from './errors';
import { encode, type Value } from './payload';
import { stubs } from './proto';
import { backoffDelay } from './retry';
import { extractTraceContext, tracer } from './tracing';
import { decodeClaims, decodeCompletions, type Claim, type ClaimedJobFields, type CompletionOutcome } from './wire';

export interface WorkerOptions {
  /** The queue (or queues, in order of preference) to take jobs from. */
  queue: string | string[];
  /** Jobs run at once. Default 8. */
  concurrency?: number;
  /** The worker's id in job events; default `<hostname>-<pid>-<random>`. */
  workerId?: string;
  /** The lease asked for each job, in ms. Default 30 000. */
  leaseMs?: number;
  /** Time between heartbeats of a running job; default a third of the lease. */
  heartbeatIntervalMs?: number;
  /** Time to acknowledge a claimed job, in ms (jobd's `ack_timeout`). Default 5 000. */
  ackTimeoutMs?: number;
  /** How long a claim waits for a job (a long poll); bounds how long close() waits for one. Default 5 000. */
  claimWaitMs?: number;
  /** How long close() lets running handlers finish before aborting them. Default 30 000. */
  shutdownTimeoutMs?: number;
  /** Whether run() closes the worker on SIGTERM and SIGINT. Default true. */
  handleSignals?: boolean;
  /** Where the worker reports what it cannot throw to anyone; default console. */
  logger?: { warn(message: string, error?: unknown): void };
}

/** A claimed job as a handler sees it. */
export interface WorkerJob {
  readonly id: string;
  readonly queue: string;
  readonly kind: string;
  /** This attempt's number, from 1. */
  readonly attempt: number;
  readonly maxAttempts: number;
  readonly labels: Readonly<Record<string, string>>;
  readonly payload: Buffer;
  /** The payload as UTF-8 text. */
  text(): string;
  /** The payload parsed as JSON (`undefined` when empty). */
  json<T = unknown>(): T;
  /** The job as claimed. */
  readonly raw: Job;
}

export interface JobContext {
  /**
   * Aborts when the job was cancelled (heard within one heartbeat interval), its lease was lost,
   * or the worker's shutdown deadline passed. `signal.reason` says which; the handler should
   * stop: its result would be refused.
   */
  readonly signal: AbortSignal;
  /** Reports progress now (a Heartbeat with a PROGRESS event). */
  progress(value?: number, message?: string): Promise<void>;
}

/**
 * A handler: its return value is the job's result (a Buffer or Uint8Array as it is, a string as
 * UTF-8, `undefined` as empty, anything else as JSON); a thrown error fails the attempt (retried
 * per the job's backoff), a NonRetryableError fails the job for good.
 */
export type Handler = (job: WorkerJob, ctx: JobContext) => Value | Promise<Value>;

/** The worker's shutdown deadline passed while the handler ran; the job was given back. */
export class ShutdownAbort extends Error {
  constructor() {
    super('the worker shut down before the job finished');
    this.name = 'ShutdownAbort';
  }
}

interface Running {
  claimed: Claim;
  job: ClaimedJobFields;
  abort: LazyAbort;
  /** The handler ended: no more heartbeats. (A flag, not an AbortController: aborting one
   * per job costs a DOMException.) */
  done: boolean;
  timer?: NodeJS.Timeout;
  finished: Promise<void>;
}

/**
 * A job's abort, its AbortController made only when the handler reads `ctx.signal`: most never
 * do, and one per job was a measurable part of the worker's CPU per job.
 */
class LazyAbort {
  aborted = false;
  private reason: unknown;
  private controller: AbortController | undefined;

  get signal(): AbortSignal {
    if (!this.controller) {
      this.controller = new AbortController();
      if (this.aborted) this.controller.abort(this.reason);
    }
    return this.controller.signal;
  }

  abort(reason: unknown): void {
    if (this.aborted) return;
    this.aborted = true;
    this.reason = reason;
    this.controller?.abort(reason);
  }
}

const CLAIM_JOBS = '/jobd.v1.WorkerService/ClaimJobs';
const COMPLETE_JOBS = '/jobd.v1.WorkerService/CompleteJobs';
// The replies of these two, which carry the claimed jobs, are read by wire.ts.

export class Worker {
  readonly workerId: string;
  private readonly client: JobdClient;
  private readonly handlers = new Map<string, Handler>();
  private readonly queues: string[];
  private readonly concurrency: number;
  private readonly leaseMs: number;
  private readonly heartbeatMs: number;
  private readonly ackTimeoutMs: number;
  private readonly claimWaitMs: number;
  private readonly shutdownTimeoutMs: number;
  private readonly handleSignals: boolean;
  private readonly logger: { warn(message: string, error?: unknown): void };
  /** A ProxyTracer, which follows an SDK registered later; asked for once, not per job. */
  private readonly tracer = tracer();

  private readonly running = new Map<string, Running>();
  /** Slots promised to claims in flight (ClaimJobs, or a CompleteJobs' `next`). */
  private reserved = 0;
  private completions: Completion[] = [];
  private flushScheduled = false;
  private claimFailures = 0;
  private retryTimer: NodeJS.Timeout | undefined;
  private readonly calls = new Set<Promise<unknown>>();
  private started = false;
  private closing: Promise<void> | undefined;
  private closed!: () => void;
  private readonly whenClosed = new Promise<void>((resolve) => (this.closed = resolve));

  constructor(client: JobdClient, options: WorkerOptions) {
    this.client = client;
    this.queues = Array.isArray(options.queue) ? options.queue : [options.queue];
    this.concurrency = options.concurrency ?? 8;
    this.leaseMs = options.leaseMs ?? 30_000;
    this.heartbeatMs = options.heartbeatIntervalMs ?? this.leaseMs / 3;
    this.ackTimeoutMs = options.ackTimeoutMs ?? 5_000;
    this.claimWaitMs = options.claimWaitMs ?? 5_000;
    this.shutdownTimeoutMs = options.shutdownTimeoutMs ?? 30_000;
    this.handleSignals = options.handleSignals ?? true;
    this.logger = options.logger ?? { warn: (message, error) => console.warn(`jobd worker: ${message}`, error ?? '') };
    const host = hostname().replace(/[^A-Za-z0-9._\-:@/]/g, '_').slice(0, 80);
    this.workerId = options.workerId ?? `${host}-${process.pid}-${randomBytes(3).toString('hex')}`;
    if (this.concurrency < 1) throw new RangeError('concurrency must be at least 1');
  }

  /** Registers the handler of a job kind. */
  handle(kind: string, handler: Handler): this {
    this.handlers.set(kind, handler);
    return this;
  }

  /** Starts claiming; does not wait. */
  start(): void {
    if (this.started) return;
    this.started = true;
    this.fill();
  }

  /**
   * Starts claiming and resolves once the worker closed: on SIGTERM/SIGINT (unless
   * `handleSignals: false`) or a call to close(). A second signal exits the process at once.
   */
  async run(): Promise<void> {
    const onSignal = (signal: NodeJS.Signals) => {
      if (this.closing) process.exit(signal === 'SIGINT' ? 130 : 143);
      void this.close();
    };
    if (this.handleSignals) {
      process.on('SIGTERM', onSignal);
      process.on('SIGINT', onSignal);
    }
    this.start();
    try {
      await this.whenClosed;
    } finally {
      process.off('SIGTERM', onSignal);
      process.off('SIGINT', onSignal);
    }
  }

  /** What the worker holds now: running handlers, and slots promised to claims in flight. */
  status(): { running: number; claiming: number; closing: boolean } {
    return { running: this.running.size, claiming: this.reserved, closing: this.closing !== undefined };
  }

  /**
   * Graceful shutdown: stops claiming; lets running handlers finish until the shutdown
   * deadline, then aborts them and gives their jobs back; reports every outcome; lets claims
   * in flight end by their wait and gives back what they bring. Idempotent.
   */
  close(): Promise<void> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  private async shutdown(): Promise<void> {
    clearTimeout(this.retryTimer);
    const deadline = sleep(this.shutdownTimeoutMs, 'timeout' as const, { ref: false });
    const handlersDone = Promise.all([...this.running.values()].map((run) => run.finished)).then(() => 'done' as const);
    if ((await Promise.race([handlersDone, deadline])) === 'timeout') {
      for (const run of this.running.values()) {
        run.abort.abort(new ShutdownAbort());
        this.release(run.claimed, 'its worker shut down before the job finished');
      }
    }
    this.flush();
    // Claims, completions, failures and releases in flight; settling may start releases.
    while (this.calls.size > 0) await Promise.allSettled([...this.calls]);
    this.closed();
  }

  /** Claims for the free slots, unless a completion will claim them with its `next`. */
  private fill(): void {
    if (!this.started || this.closing || this.flushScheduled || this.retryTimer) return;
    const free = this.concurrency - this.running.size - this.reserved;
    if (free <= 0) return;
    this.reserved += free;
    const request: ClaimJobsRequest = { claim: this.claimRequest(), maxJobs: free };
    const call = this.client
      .unary<{ jobs: Claim[] }>(
        (metadata, options, callback) =>
          this.client.workers.makeUnaryRequest(CLAIM_JOBS, stubs().WorkerService.service.ClaimJobs.requestSerialize, decodeClaims, request, metadata, options, callback),
        { method: 'jobd.v1.WorkerService/ClaimJobs', retry: false, extraMs: this.claimWaitMs },
      )
      .then(
        (response) => {
          this.reserved -= free;
          this.claimFailures = 0;
          this.received(response.jobs);
          this.fill();
        },
        (error: JobdError) => {
          this.reserved -= free;
          this.claimFailed(error);
        },
      );
    this.track(call);
  }

  /** After a failed claim: try again after a backoff (every claim is safe to repeat). */
  private claimFailed(error: JobdError): void {
    if (this.closing) return;
    if (error.code !== Status.UNAVAILABLE) this.logger.warn(`claim failed (${error.reason})`, error);
    const delay = backoffDelay({ ...this.client.retry, maxAttempts: Infinity }, this.claimFailures++);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      this.fill();
    }, delay);
  }

  private claimRequest() {
    return {
      queues: this.queues,
      workerId: this.workerId,
      lease: duration(this.leaseMs),
      wait: duration(this.claimWaitMs),
      ackTimeout: duration(this.ackTimeoutMs),
    };
  }

  /** Jobs a claim brought: started, or given back when the worker is closing. */
  private received(jobs: Claim[]): void {
    for (const claimed of jobs) {
      if (this.closing) this.release(claimed, 'its worker shut down before starting the job');
      else this.begin(claimed);
    }
  }

  private begin(claimed: Claim): void {
    const job = claimed.job;
    const run: Running = { claimed, job, abort: new LazyAbort(), done: false, finished: Promise.resolve() };
    this.running.set(job.id, run);
    this.scheduleHeartbeat(run, Math.min(this.heartbeatMs, this.ackTimeoutMs / 2));
    run.finished = this.execute(run).finally(() => {
      run.done = true;
      clearTimeout(run.timer);
      this.running.delete(job.id);
      this.fill();
    });
  }

  private async execute(run: Running): Promise<void> {
    const { job, claimed } = run;
    const handler = this.handlers.get(job.kind);
    const parent = extractTraceContext(job.traceContext);
    const span = this.tracer.startSpan(
      `process ${job.kind}`,
      {
        kind: SpanKind.CONSUMER,
        attributes: {
          'messaging.system': 'jobd',
          'messaging.destination.name': job.queue,
          'jobd.job.id': job.id,
          'jobd.job.kind': job.kind,
          'jobd.job.attempt': job.attempt,
        },
      },
      parent,
    );
    try {
      if (!handler) throw new Error(`no handler for kind ${JSON.stringify(job.kind)} in worker ${this.workerId}`);
      const ctx: JobContext = {
        get signal() {
          return run.abort.signal;
        },
        progress: (value, message) => this.progress(run, value, message),
      };
      // A span with no valid context (no SDK, and a job without trace context) has nothing to
      // propagate: the handler runs without a context made for it (one per job otherwise).
      const value = await (isSpanContextValid(span.spanContext())
        ? context.with(trace.setSpan(parent, span), () => handler(workerJob(job), ctx))
        : handler(workerJob(job), ctx));
      if (run.abort.aborted) return; // cancelled or lost: jobd would refuse the result
      this.complete({ jobId: job.id, leaseToken: claimed.leaseToken, result: encode(value) });
    } catch (error) {
      span.recordException(error instanceof Error ? error : String(error));
      span.setStatus({ code: SpanStatusCode.ERROR, message: error instanceof Error ? error.message : String(error) });
      if (run.abort.aborted) return;
      this.fail(claimed, error);
    } finally {
      span.end();
    }
  }

  /** Queues a completion; those of one event-loop turn go out in one CompleteJobs. */
  private complete(completion: Completion): void {
    this.completions.push(completion);
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    setImmediate(() => {
      this.flushScheduled = false;
      this.flush();
    });
  }

  /** Sends the queued completions, claiming the free slots with `next` unless closing. */
  private flush(): void {
    while (this.completions.length > 0) {
      const completions = this.completions.splice(0, 100);
      const free = this.closing || this.retryTimer ? 0 : this.concurrency - this.running.size - this.reserved;
      this.reserved += free;
      const request: { completions: Completion[]; next?: ClaimJobsRequest } = { completions };
      if (free > 0) request.next = { claim: this.claimRequest(), maxJobs: free };
      const call = this.client
        .unary<{ results: CompletionOutcome[]; next: Claim[] }>(
          (metadata, options, callback) =>
            this.client.workers.makeUnaryRequest(COMPLETE_JOBS, stubs().WorkerService.service.CompleteJobs.requestSerialize, decodeCompletions, request, metadata, options, callback),
          { method: 'jobd.v1.WorkerService/CompleteJobs', retry: true, extraMs: free > 0 ? this.claimWaitMs : 0 },
        )
        .then(
          (response) => {
            response.results.forEach((result, i) => {
              // NOT_FOUND or FAILED_PRECONDITION: the job was cancelled or its lease lost meanwhile.
              if (result.code !== Status.OK) this.logger.warn(`completion of ${completions[i]?.jobId} refused: ${result.message}`);
            });
            this.reserved -= free;
            this.received(response.next);
          },
          (error: JobdError) => {
            this.reserved -= free;
            this.logger.warn(`completing ${completions.length} job(s) failed (${error.reason})`, error);
          },
        )
        .finally(() => this.fill());
      this.track(call);
    }
    this.fill();
  }

  private fail(claimed: Claim, error: unknown): void {
    const jobId = claimed.job.id;
    const text = error instanceof Error ? (error.stack ?? `${error.name}: ${error.message}`) : String(error);
    const request = { jobId, leaseToken: claimed.leaseToken, error: text || 'failed', retryable: !(error instanceof NonRetryableError) };
    this.track(
      this.client
        .unary((metadata, options, callback) => this.client.workers.FailJob(request, metadata, options, callback), { method: 'jobd.v1.WorkerService/FailJob', retry: true })
        .catch((failure: JobdError) => this.logger.warn(`reporting the failure of ${jobId} failed (${failure.reason})`, failure)),
    );
  }

  private release(claimed: Claim, reason: string): void {
    const jobId = claimed.job.id;
    const request = { jobId, leaseToken: claimed.leaseToken, reason };
    this.track(
      this.client
        .unary((metadata, options, callback) => this.client.workers.ReleaseJob(request, metadata, options, callback), { method: 'jobd.v1.WorkerService/ReleaseJob', retry: true })
        .catch((failure: JobdError) => this.logger.warn(`giving back ${jobId} failed (${failure.reason})`, failure)),
    );
  }

  private scheduleHeartbeat(run: Running, afterMs: number): void {
    if (run.done) return;
    run.timer = setTimeout(() => {
      void this.heartbeat(run).then((ok) => {
        if (ok) this.scheduleHeartbeat(run, this.heartbeatMs * (0.8 + 0.2 * Math.random()));
      });
    }, afterMs);
  }

  private progress(run: Running, value?: number, message?: string): Promise<void> {
    const progress: { value?: number; message: string } = { message: message ?? '' };
    if (value !== undefined) progress.value = value;
    return this.heartbeat(run, progress).then(() => undefined);
  }

  /** One heartbeat; false once the job is over for this worker (cancelled, lease lost). */
  private async heartbeat(run: Running, progress?: { value?: number; message: string }): Promise<boolean> {
    if (run.done || run.abort.aborted) return false;
    const request: HeartbeatRequest = { jobId: run.job.id, leaseToken: run.claimed.leaseToken };
    if (progress) request.progress = progress;
    try {
      const response = await this.client.unary<HeartbeatResponse__Output>(
        (metadata, options, callback) => this.client.workers.Heartbeat(request, metadata, options, callback),
        { method: 'jobd.v1.WorkerService/Heartbeat', retry: true },
      );
      if (response.cancelled) {
        run.abort.abort(new JobCancelledError(Status.FAILED_PRECONDITION, 'JOB_CANCELLED', `job ${run.job.id} was cancelled`));
        return false;
      }
      return true;
    } catch (thrown) {
      const error = toJobdError(thrown);
      if (run.done) return false;
      if (error.code === Status.FAILED_PRECONDITION || error.code === Status.NOT_FOUND) {
        // The lease is gone (expired, or the job finished or was cancelled): stop the handler.
        run.abort.abort(error);
        return false;
      }
      this.logger.warn(`heartbeat of ${run.job.id} failed (${error.reason})`, error);
      return true;
    }
  }

  private track(call: Promise<unknown>): void {
    this.calls.add(call);
    void call.finally(() => this.calls.delete(call));
  }
}

function workerJob(job: ClaimedJobFields): WorkerJob {
  return {
    id: job.id,
    queue: job.queue,
    kind: job.kind,
    attempt: job.attempt,
    maxAttempts: job.maxAttempts,
    labels: job.labels,
    payload: job.payload,
    text: () => job.payload.toString('utf8'),
    json: <T>() => (job.payload.length === 0 ? undefined : JSON.parse(job.payload.toString('utf8'))) as T,
    get raw() {
      return job.raw;
    },
  };
}

