//! Decoders for the SubmitAndWatchJobs messages `submitAndWait` reads: only the fields it uses,
//! straight from the wire. The stub's decoder builds the whole message (every event's
//! timestamps, every submitted job with its defaults) as plain objects, three events and a job
//! per waited job, which was a large part of the client's CPU per job. Field numbers and enum
//! values are those of proto/jobd/v1 (job.proto, job_service.proto); test/wire.test.ts checks
//! these decoders against messages encoded from the protos.
import { Reader } from 'protobufjs';

/** EventType values (job.proto) that end a job. */
export const EVENT_COMPLETED = 4;
export const EVENT_FAILED = 5;
export const EVENT_CANCELLED = 6;

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
      case 6: {
        // A view of the message's bytes (a Buffer in Node), as the stub's decoder gives.
        const bytes = reader.bytes();
        event.result = Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
        break;
      }
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
