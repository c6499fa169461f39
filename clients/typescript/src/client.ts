//! JobdClient: one channel to jobd, the submitter API (submit, get, cancel, watch,
//! submitAndWait), and the unary-call plumbing (credentials, deadlines, retries, typed errors)
//! that the Worker uses too.
import * as grpc from '@grpc/grpc-js';
import { status as Status } from '@grpc/grpc-js';
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';

import type { Job__Output as Job } from './generated/jobd/v1/Job';
import type { JobEvent__Output as JobEvent } from './generated/jobd/v1/JobEvent';
import type { QueueStats__Output as QueueStats } from './generated/jobd/v1/QueueStats';
import type { SubmitJobRequest } from './generated/jobd/v1/SubmitJobRequest';
import type { SubmitJobResponse__Output } from './generated/jobd/v1/SubmitJobResponse';
import type { BackoffPolicy } from './generated/jobd/v1/BackoffPolicy';
import type { Duration } from './generated/google/protobuf/Duration';
import { JobdError, toJobdError } from './errors';
import { isTerminal } from './events';
import { encode, type Bytes, type Value } from './payload';
import { backoffDelay, defaultRetry, isRetryable, withRetry, type RetryPolicy } from './retry';
import { durationMs, serviceConfig, stubs, type JobServiceClient, type WorkerServiceClient } from './proto';
import { injectTraceContext } from './tracing';
import { Waits } from './waits';

export type { Job, JobEvent, QueueStats };

/** How to reach jobd. */
export interface ClientOptions {
  /** host:port; default `$JOBD_ADDRESS`, else `127.0.0.1:50051`. */
  address?: string | undefined;
  /** Bearer token sent as `authorization: Bearer <token>` on every call (docs/security.md). */
  token?: string | undefined;
  /**
   * TLS: `true` for the system's CAs, or PEM files: `caFile` (the CAs to trust for jobd's
   * certificate), `certFile` + `keyFile` (a client certificate, for mTLS). Plaintext when unset.
   */
  tls?: boolean | TlsOptions;
  /** Retries on UNAVAILABLE for calls safe to repeat; `{ maxAttempts: 1 }` turns them off. */
  retry?: Partial<RetryPolicy>;
  /**
   * Deadline of each unary call attempt, in ms (claims add their wait). Default: the service
   * config's timeout for the method (10 s; 75 s for claims and completions).
   */
  callTimeoutMs?: number;
  /**
   * How long `watch` (and `submitAndWait`) keeps resuming a broken stream while every attempt
   * fails (jobd restarting, say), in ms. Default 60 000. A stream that had stayed open for the
   * retry policy's longest delay (`maxBackoffMs`) before it broke starts the count afresh; one
   * that jobd ended with OK on an unfinished job does not.
   */
  watchResumeMs?: number;
  /** Extra channel options for @grpc/grpc-js. */
  channelOptions?: grpc.ChannelOptions;
}

export interface TlsOptions {
  caFile?: string;
  certFile?: string;
  keyFile?: string;
  /** The name to verify jobd's certificate against, when not the address's host. */
  serverName?: string;
}

/** A job to submit; every option but queue and kind has jobd's default (docs/api.md). */
export interface SubmitOptions {
  queue: string;
  kind: string;
  /** Buffer/Uint8Array as is, a string as UTF-8, anything else as JSON. */
  payload?: Value;
  labels?: Record<string, string>;
  maxAttempts?: number;
  backoff?: { initialMs?: number; multiplier?: number; maxMs?: number; jitter?: number };
  /** Not claimable before this time. */
  runAt?: Date;
  /** Not claimable before this many ms from now. */
  delayMs?: number;
  priority?: number;
  leaseMs?: number;
  /**
   * Makes the submission idempotent (per queue). When unset and retries are on, the client
   * generates one (kept `generatedKeyTtlMs`), so that a retried submission cannot create its
   * job twice.
   */
  idempotencyKey?: string;
  idempotencyTtlMs?: number;
  retentionMs?: number;
}

/** A submission's outcome. */
export interface Submitted {
  id: string;
  /** False when an earlier submission with the same idempotency key made the job. */
  created: boolean;
  /** The job as created, without payload, labels and result (`get` has them). */
  job: Job;
}

export interface WatchOptions {
  /** Only events after this sequence (0, the default: the whole history). */
  afterSequence?: number;
  signal?: AbortSignal;
}

const TERMINAL_STATES = new Set(['JOB_STATE_COMPLETED', 'JOB_STATE_FAILED', 'JOB_STATE_CANCELLED']);

/** How long a key the client generated lives: well past its retries. */
const GENERATED_KEY_TTL_MS = 10 * 60_000;

type Callback<T> = (error: grpc.ServiceError | null, value?: T) => void;

export class JobdClient {
  /** @internal */ readonly jobs: JobServiceClient;
  /** @internal */ readonly workers: WorkerServiceClient;
  /** @internal */ readonly retry: RetryPolicy;
  /** @internal */ readonly callTimeoutMs: number | undefined;
  /** @internal */ readonly watchResumeMs: number;
  readonly address: string;
  private readonly token: string | undefined;
  private readonly waits = new Waits(this);
  private closed = false;

  constructor(options: ClientOptions = {}) {
    this.address = options.address ?? process.env.JOBD_ADDRESS ?? '127.0.0.1:50051';
    this.token = options.token;
    this.retry = { ...defaultRetry(), ...options.retry };
    this.callTimeoutMs = options.callTimeoutMs;
    this.watchResumeMs = options.watchResumeMs ?? 60_000;
    const channelOptions: grpc.ChannelOptions = {
      // Watch streams may stay quiet for long: keepalive finds a dead connection (and keeps a
      // proxy's idle timer from cutting it) without waiting for the next call.
      'grpc.keepalive_time_ms': 60_000,
      'grpc.keepalive_timeout_ms': 20_000,
      // The library retries by its own rules (retry.ts); grpc-js's retry machinery (a call
      // wrapper buffering every message) is off, which saves it on every call.
      'grpc.enable_retries': 0,
      ...options.channelOptions,
    };
    const tls = options.tls === true ? {} : options.tls || undefined;
    if (tls?.serverName) channelOptions['grpc.ssl_target_name_override'] = tls.serverName;
    const credentials = tls
      ? grpc.credentials.createSsl(
          tls.caFile ? readFileSync(tls.caFile) : null,
          tls.keyFile ? readFileSync(tls.keyFile) : null,
          tls.certFile ? readFileSync(tls.certFile) : null,
        )
      : grpc.credentials.createInsecure();
    const { JobService, WorkerService } = stubs();
    this.jobs = new JobService(this.address, credentials, channelOptions);
    this.workers = new WorkerService(this.address, credentials, {
      ...channelOptions,
      channelOverride: this.jobs.getChannel(),
    });
  }

  /** Submits a job. Retried on UNAVAILABLE, with an idempotency key (the caller's or generated). */
  async submit(job: SubmitOptions): Promise<Submitted> {
    const request = this.submitRequest(job);
    const response = await this.unary<SubmitJobResponse__Output>(
      (metadata, options, callback) => this.jobs.SubmitJob(request, metadata, options, callback),
      { method: 'jobd.v1.JobService/SubmitJob', retry: Boolean(request.idempotencyKey), trace: true },
    );
    return submitted(response);
  }

  /** Submits up to 1000 jobs in one call, answered in their order (SubmitJobs). */
  async submitMany(jobs: SubmitOptions[]): Promise<Submitted[]> {
    const requests = jobs.map((job) => this.submitRequest(job));
    const response = await this.unary<{ results: SubmitJobResponse__Output[] }>(
      (metadata, options, callback) => this.jobs.SubmitJobs({ jobs: requests }, metadata, options, callback),
      { method: 'jobd.v1.JobService/SubmitJobs', retry: requests.every((request) => request.idempotencyKey), trace: true },
    );
    return response.results.map(submitted);
  }

  /** The job, with its payload and result. JobNotFoundError once its retention passed. */
  async get(jobId: string): Promise<Job> {
    const response = await this.unary<{ job: Job | null }>(
      (metadata, options, callback) => this.jobs.GetJob({ jobId }, metadata, options, callback),
      { method: 'jobd.v1.JobService/GetJob', retry: true },
    );
    return present(response.job);
  }

  /** Cancels a queued or running job; its worker hears of it at its next heartbeat. */
  async cancel(jobId: string, reason = ''): Promise<Job> {
    const response = await this.unary<{ job: Job | null }>(
      (metadata, options, callback) => this.jobs.CancelJob({ jobId, reason }, metadata, options, callback),
      { method: 'jobd.v1.JobService/CancelJob', retry: true },
    );
    return present(response.job);
  }

  /** A queue's jobs counted by state. */
  async stats(queue: string): Promise<QueueStats> {
    return this.unary<QueueStats>(
      (metadata, options, callback) => this.jobs.GetQueueStats({ queue }, metadata, options, callback),
      { method: 'jobd.v1.JobService/GetQueueStats', retry: true },
    );
  }

  /**
   * A job's events, each once and in order, until its terminal event. A stream that breaks
   * (jobd restarting or shutting down, a connection lost, cut or reset) is resumed with
   * `after_sequence` = the last sequence received, with the retry policy's backoff, so no event
   * is missed or repeated. The resumes run out once failures in a row have lasted `watchResumeMs`
   * (60 s) or longer: the last attempt's error is thrown. An event, or the break of a
   * stream that had stayed open for `maxBackoffMs`, starts afresh. Stopping the iteration
   * (break) ends the call; aborting `signal` throws its reason.
   */
  async *watch(jobId: string, options: WatchOptions = {}): AsyncGenerator<JobEvent, void, undefined> {
    let after = options.afterSequence ?? 0;
    // Consecutive failures, and since when: resumed with backoff for watchResumeMs. An event
    // resets both; so does the break of a stream that had stayed open for a while.
    let failures = 0;
    let brokenSince = 0;
    const broken = async (error: JobdError) => {
      brokenSince ||= Date.now();
      if (Date.now() - brokenSince >= this.watchResumeMs) throw error;
      this.retry.onRetry?.(error, ++failures);
      await sleep(backoffDelay(this.retry, failures - 1));
    };
    for (;;) {
      const call = this.jobs.WatchJob({ jobId, afterSequence: after }, this.metadata(), {});
      // When jobd answered this stream (its response headers came).
      let openedAt = 0;
      call.on('metadata', () => {
        openedAt = Date.now();
      });
      const abort = () => call.cancel();
      options.signal?.addEventListener('abort', abort, { once: true });
      try {
        for await (const event of call as AsyncIterable<JobEvent>) {
          failures = 0;
          brokenSince = 0;
          after = event.sequence;
          yield event;
          if (isTerminal(event)) return;
        }
        // Ended with OK before a terminal event: the job may have finished meanwhile (a stream
        // after its last event ends at once), else the server let the stream go.
        const job = await this.get(jobId);
        if (TERMINAL_STATES.has(job.state) && job.lastSequence <= after) return;
        await broken(new JobdError(Status.UNAVAILABLE, 'UNAVAILABLE', `the watch of job ${jobId} ended early`));
      } catch (thrown) {
        const error = toJobdError(thrown);
        if (options.signal?.aborted) throw options.signal.reason;
        if (this.closed) throw error;
        // CANCELLED that the caller did not cause (its signal, close()) is a connection reset
        // in some transports: resumed, as the Rust and Python clients do.
        if (error.code !== Status.CANCELLED && !isResumable(error)) throw error;
        // A stream that stayed open for the longest backoff delay was healthy: its break starts
        // afresh, so a quiet watch survives any number of cuts over its life (a proxy's idle
        // timeout, jobd's max connection age). A stream jobd ended with OK never does.
        if (openedAt && Date.now() - openedAt >= this.retry.maxBackoffMs) {
          failures = 0;
          brokenSince = 0;
        }
        await broken(error);
      } finally {
        options.signal?.removeEventListener('abort', abort);
        call.cancel();
      }
    }
  }

  /**
   * Submits a job and waits for its outcome: its result (`Bytes`), or a JobFailedError when it
   * FAILED, a JobWasCancelledError when it was CANCELLED. The submissions of one turn of the
   * event loop share one SubmitAndWatchJobs stream; a broken stream is resumed per job with
   * `watch`. Aborting `signal` stops waiting (the job goes on).
   */
  submitAndWait(job: SubmitOptions, options: { signal?: AbortSignal } = {}): Promise<Bytes> {
    return this.waits.wait(this.submitRequest(job), options.signal);
  }

  /** Closes the channel; calls in flight fail with CANCELLED, and watches end, unresumed. */
  close(): void {
    this.closed = true;
    this.jobs.close();
  }

  /** @internal Metadata for one call: the bearer token, when set. */
  metadata(): grpc.Metadata {
    const metadata = new grpc.Metadata();
    if (this.token) metadata.set('authorization', `Bearer ${this.token}`);
    return metadata;
  }

  /**
   * @internal One unary call with a deadline and typed errors; retried on UNAVAILABLE when
   * `retry`. `extraMs` lengthens the deadline (a claim's wait).
   */
  unary<T>(
    invoke: (metadata: grpc.Metadata, options: grpc.CallOptions, callback: Callback<T>) => grpc.ClientUnaryCall,
    how: { method: string; retry: boolean; trace?: boolean; extraMs?: number; signal?: AbortSignal },
  ): Promise<T> {
    const timeoutMs = this.callTimeoutMs !== undefined ? this.callTimeoutMs + (how.extraMs ?? 0) : methodTimeoutMs(how.method);
    const attempt = () =>
      new Promise<T>((resolve, reject) => {
        const metadata = this.metadata();
        if (how.trace) injectTraceContext(metadata);
        const deadline = new Date(Date.now() + timeoutMs);
        invoke(metadata, { deadline }, (error, value) => (error ? reject(toJobdError(error)) : resolve(value as T)));
      });
    return how.retry ? withRetry(this.retry, attempt, how.signal) : attempt().catch((error) => Promise.reject(toJobdError(error)));
  }

  private submitRequest(job: SubmitOptions): SubmitJobRequest {
    const request: SubmitJobRequest = {
      queue: job.queue,
      kind: job.kind,
      payload: encode(job.payload),
      labels: job.labels ?? {},
      maxAttempts: job.maxAttempts ?? 0,
      priority: job.priority ?? 0,
      idempotencyKey: job.idempotencyKey ?? '',
    };
    if (!job.idempotencyKey && this.retry.maxAttempts > 1) {
      request.idempotencyKey = `jobd-client:${randomUUID()}`;
      request.idempotencyTtl = duration(job.idempotencyTtlMs ?? Math.min(GENERATED_KEY_TTL_MS, job.retentionMs ?? Infinity));
    } else if (job.idempotencyTtlMs !== undefined) {
      request.idempotencyTtl = duration(job.idempotencyTtlMs);
    }
    if (job.backoff) {
      const backoff: BackoffPolicy = {};
      if (job.backoff.initialMs !== undefined) backoff.initial = duration(job.backoff.initialMs);
      if (job.backoff.maxMs !== undefined) backoff.max = duration(job.backoff.maxMs);
      if (job.backoff.multiplier !== undefined) backoff.multiplier = job.backoff.multiplier;
      if (job.backoff.jitter !== undefined) backoff.jitter = job.backoff.jitter;
      request.backoff = backoff;
    }
    if (job.runAt) {
      const ms = job.runAt.getTime();
      request.runAt = { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1e6 };
    } else if (job.delayMs !== undefined) {
      request.delay = duration(job.delayMs);
    }
    if (job.leaseMs !== undefined) request.lease = duration(job.leaseMs);
    if (job.retentionMs !== undefined) request.retention = duration(job.retentionMs);
    return request;
  }

}

/** Whether a broken stream is worth resuming: UNAVAILABLE, or a status the transport made. */
function isResumable(error: JobdError): boolean {
  if (isRetryable(error)) return true;
  // RST_STREAM from a proxy or a dying server surfaces as INTERNAL or UNKNOWN without jobd's
  // ErrorInfo (its reason is then the code's name); jobd's own INTERNAL is not resumed.
  return (error.code === Status.INTERNAL && error.reason === 'INTERNAL' && !hasJobdDetails(error)) ||
    (error.code === Status.UNKNOWN && error.reason === 'UNKNOWN');
}

function hasJobdDetails(error: JobdError): boolean {
  const cause = error.cause as grpc.ServiceError | undefined;
  return Boolean(cause?.metadata?.get('grpc-status-details-bin').length);
}

function submitted(response: SubmitJobResponse__Output): Submitted {
  const job = present(response.job);
  return { id: job.id, created: response.created, job };
}

function present<T>(value: T | null | undefined): T {
  if (value === null || value === undefined) {
    throw new JobdError(Status.INTERNAL, 'INTERNAL', 'jobd answered without the expected message');
  }
  return value;
}

/** The service config's timeout for `method` ("jobd.v1.JobService/GetJob"); 10 s when it has none. */
function methodTimeoutMs(method: string): number {
  const [service, name] = method.split('/');
  const config = serviceConfig().methodConfig.find((entry) =>
    entry.name.some((n) => n.service === service && (n.method === undefined || n.method === name)));
  return config?.timeout ? durationMs(config.timeout) : 10_000;
}

/** Milliseconds as a google.protobuf.Duration. */
export function duration(ms: number): Duration {
  const whole = Math.floor(ms / 1000);
  return { seconds: whole, nanos: Math.round((ms - whole * 1000) * 1e6) };
}

/** A google.protobuf.Timestamp as a Date (undefined when unset). */
export function toDate(timestamp: { seconds: number; nanos: number } | null | undefined): Date | undefined {
  return timestamp ? new Date(timestamp.seconds * 1000 + Math.floor(timestamp.nanos / 1e6)) : undefined;
}
