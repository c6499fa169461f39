//! Decoders for the messages read once or more per job (SubmitAndWatchJobs' for
//! `submitAndWait`, ClaimJobs' and CompleteJobs' replies for the worker): only the fields the
//! library uses, straight from the wire. The stubs' decoders build each whole message (every
//! timestamp, every field with its default) as plain objects, three events and two jobs per
//! job, which was a large part of the client's CPU per job. A claimed job's whole `Job` is
//! decoded by the stub's decoder when a handler asks for it (`WorkerJob.raw`). Field numbers and
//! enum values are those of proto/jobd/v1 (job.proto, job_service.proto, worker_service.proto);
//! test/wire.test.ts checks these decoders against messages encoded from the protos.
import { Reader, Writer } from 'protobufjs';

import type { Job__Output as Job } from './generated/jobd/v1/Job';
import { stubs } from './proto';

/** EventType values (job.proto) that end a job. */
export const EVENT_COMPLETED = 4;
export const EVENT_FAILED = 5;
export const EVENT_CANCELLED = 6;

/** Whether an EventType number is one that ends a job. */
export function isTerminalType(type: number): boolean {
  return type === EVENT_COMPLETED || type === EVENT_FAILED || type === EVENT_CANCELLED;
}

/** The fields of a JobEvent that tell a waiter how its job ended. */
export interface WaitEvent {
  jobId: string;
  sequence: number;
  /** EventType's number. */
  type: number;
  attempt: number;
  result: Buffer;
  error: string;
  reason: string;
}

/** One SubmitAndWatchJobsResponse: the submitted jobs' ids (in request order), or an event. */
export type WaitMessage = { ids: string[]; event?: undefined } | { ids?: undefined; event: WaitEvent };

const EMPTY = Buffer.alloc(0);
const LENGTH_DELIMITED = 2;

/** Decodes a SubmitAndWatchJobsResponse (`submitted` = 1, `event` = 2). */
export function decodeWaitMessage(bytes: Buffer): WaitMessage {
  const reader = Reader.create(bytes);
  let message: WaitMessage = { ids: [] };
  while (reader.pos < reader.len) {
    const tag = reader.uint32();
    const field = tag >>> 3;
    if (field === 1 && (tag & 7) === LENGTH_DELIMITED) message = { ids: submittedIds(reader, reader.uint32() + reader.pos) };
    else if (field === 2 && (tag & 7) === LENGTH_DELIMITED) message = { event: event(reader, reader.uint32() + reader.pos) };
    else reader.skipType(tag & 7);
  }
  return message;
}

/** SubmitJobsResponse: `results` = 1, each a SubmitJobResponse whose `job` = 1 has `id` = 1. */
function submittedIds(reader: Reader, end: number): string[] {
  const ids: string[] = [];
  while (reader.pos < end) {
    const tag = reader.uint32();
    if (tag >>> 3 !== 1 || (tag & 7) !== LENGTH_DELIMITED) {
      reader.skipType(tag & 7);
      continue;
    }
    const resultEnd = reader.uint32() + reader.pos;
    let id = '';
    while (reader.pos < resultEnd) {
      const inner = reader.uint32();
      if (inner >>> 3 === 1 && (inner & 7) === LENGTH_DELIMITED) id = jobId(reader, reader.uint32() + reader.pos);
      else reader.skipType(inner & 7);
    }
    ids.push(id);
  }
  return ids;
}

/** A Job's `id` (field 1); the rest is skipped. */
function jobId(reader: Reader, end: number): string {
  let id = '';
  while (reader.pos < end) {
    const tag = reader.uint32();
    if (tag >>> 3 === 1 && (tag & 7) === LENGTH_DELIMITED) id = reader.string();
    else reader.skipType(tag & 7);
  }
  return id;
}

/** A JobEvent: job_id 1, sequence 2, type 3, attempt 5, result 6, error 7, reason 8. */
function event(reader: Reader, end: number): WaitEvent {
  const event: WaitEvent = { jobId: '', sequence: 0, type: 0, attempt: 0, result: EMPTY, error: '', reason: '' };
  while (reader.pos < end) {
    const tag = reader.uint32();
    switch (tag >>> 3) {
      case 1:
        event.jobId = reader.string();
        break;
      case 2: {
        const sequence: unknown = reader.uint64();
        event.sequence = typeof sequence === 'number' ? sequence : (sequence as { toNumber(): number }).toNumber();
        break;
      }
      case 3:
        event.type = reader.int32();
        break;
      case 5:
        event.attempt = reader.uint32();
        break;
      case 6:
        event.result = buffer(reader.bytes());
        break;
      case 7:
        event.error = reader.string();
        break;
      case 8:
        event.reason = reader.string();
        break;
      default:
        reader.skipType(tag & 7);
    }
  }
  return event;
}

/** A claimed job as the worker reads it (ClaimedJob: `job` = 1, `lease_token` = 2). */
export interface Claim {
  leaseToken: string;
  job: ClaimedJobFields;
}

/** How one completion went (CompletionResult: code 1, message 2). */
export interface CompletionOutcome {
  code: number;
  message: string;
}

/** ClaimJobsResponse: `jobs` = 1. */
export function decodeClaims(bytes: Buffer): { jobs: Claim[] } {
  const reader = Reader.create(bytes);
  const jobs: Claim[] = [];
  while (reader.pos < reader.len) {
    const tag = reader.uint32();
    if (tag >>> 3 === 1 && (tag & 7) === LENGTH_DELIMITED) pushClaim(jobs, reader, reader.uint32() + reader.pos);
    else reader.skipType(tag & 7);
  }
  return { jobs };
}

/** CompleteJobsResponse: `results` = 1, `next` = 2. */
export function decodeCompletions(bytes: Buffer): { results: CompletionOutcome[]; next: Claim[] } {
  const reader = Reader.create(bytes);
  const results: CompletionOutcome[] = [];
  const next: Claim[] = [];
  while (reader.pos < reader.len) {
    const tag = reader.uint32();
    if ((tag & 7) !== LENGTH_DELIMITED || (tag >>> 3 !== 1 && tag >>> 3 !== 2)) {
      reader.skipType(tag & 7);
      continue;
    }
    const end = reader.uint32() + reader.pos;
    if (tag >>> 3 === 2) {
      pushClaim(next, reader, end);
      continue;
    }
    const result: CompletionOutcome = { code: 0, message: '' };
    while (reader.pos < end) {
      const inner = reader.uint32();
      if (inner >>> 3 === 1) result.code = reader.int32();
      else if (inner >>> 3 === 2) result.message = reader.string();
      else reader.skipType(inner & 7);
    }
    results.push(result);
  }
  return { results, next };
}

function pushClaim(claims: Claim[], reader: Reader, end: number): void {
  let job: ClaimedJobFields | undefined;
  let leaseToken = '';
  while (reader.pos < end) {
    const tag = reader.uint32();
    if (tag >>> 3 === 1 && (tag & 7) === LENGTH_DELIMITED) job = new ClaimedJobFields(reader, reader.uint32() + reader.pos);
    else if (tag >>> 3 === 2) leaseToken = reader.string();
    else reader.skipType(tag & 7);
  }
  if (job) claims.push({ leaseToken, job });
}

/**
 * The fields of a claimed Job the worker reads: id 1, queue 2, kind 3, attempt 5, payload 6,
 * labels 7, max_attempts 15, trace_context 21. `raw` is the whole Job, decoded on first use.
 */
export class ClaimedJobFields {
  id = '';
  queue = '';
  kind = '';
  attempt = 0;
  maxAttempts = 0;
  payload: Buffer = EMPTY;
  labels: Record<string, string> = {};
  traceContext: Record<string, string> = {};
  private readonly bytes: Uint8Array;
  private whole: Job | undefined;

  constructor(reader: Reader, end: number) {
    this.bytes = reader.buf.subarray(reader.pos, end);
    while (reader.pos < end) {
      const tag = reader.uint32();
      switch (tag >>> 3) {
        case 1:
          this.id = reader.string();
          break;
        case 2:
          this.queue = reader.string();
          break;
        case 3:
          this.kind = reader.string();
          break;
        case 5:
          this.attempt = reader.uint32();
          break;
        case 6:
          this.payload = buffer(reader.bytes());
          break;
        case 7:
          mapEntry(reader, this.labels);
          break;
        case 15:
          this.maxAttempts = reader.uint32();
          break;
        case 21:
          mapEntry(reader, this.traceContext);
          break;
        default:
          reader.skipType(tag & 7);
      }
    }
  }

  /** The whole Job, as the stubs decode it (GetJobResponse's `job` = 1 wraps its bytes). */
  get raw(): Job {
    if (!this.whole) {
      const wrapped = Buffer.from(Writer.create().uint32((1 << 3) | LENGTH_DELIMITED).bytes(this.bytes).finish());
      const response = stubs().JobService.service.GetJob.responseDeserialize(wrapped) as { job: Job };
      this.whole = response.job;
    }
    return this.whole;
  }
}

/** One map<string, string> entry (key 1, value 2) into `map`. */
function mapEntry(reader: Reader, map: Record<string, string>): void {
  const end = reader.uint32() + reader.pos;
  let key = '';
  let value = '';
  while (reader.pos < end) {
    const tag = reader.uint32();
    if (tag >>> 3 === 1) key = reader.string();
    else if (tag >>> 3 === 2) value = reader.string();
    else reader.skipType(tag & 7);
  }
  map[key] = value;
}

/** Bytes read from a message: a view of it (a Buffer in Node), as the stubs' decoders give. */
function buffer(bytes: Uint8Array): Buffer {
  return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}
