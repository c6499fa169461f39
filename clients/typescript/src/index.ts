//! @jobd/client: a worker runtime and a submitter API for jobd, on @grpc/grpc-js.
export { JobdClient, toDate, duration } from './client';
export { isTerminal } from './events';
export type { ClientOptions, TlsOptions, SubmitOptions, Submitted, WatchOptions, Job, JobEvent, QueueStats } from './client';
export { Worker, ShutdownAbort } from './worker';
export type { WorkerOptions, WorkerJob, JobContext, Handler } from './worker';
export * from './errors';
export { Bytes, encode } from './payload';
export type { Value } from './payload';
export { defaultRetry } from './retry';
export type { RetryPolicy } from './retry';
export type { JobState } from './generated/jobd/v1/JobState';
export type { EventType } from './generated/jobd/v1/EventType';
