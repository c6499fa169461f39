//! OpenTelemetry: a submission carries the caller's active span as W3C `traceparent` and
//! `tracestate` metadata (jobd keeps it as the job's `trace_context`), and a handler runs in a
//! span whose parent is the job's trace context. Only `@opentelemetry/api` is used, so without
//! an SDK registered all of this is a no-op.
import { Metadata } from '@grpc/grpc-js';
import {
  context,
  ROOT_CONTEXT,
  trace,
  isSpanContextValid,
  TraceFlags,
  createTraceState,
  type Context,
  type Tracer,
} from '@opentelemetry/api';

export const TRACER_NAME = '@jobd/client';

export function tracer(): Tracer {
  return trace.getTracer(TRACER_NAME);
}

/** Adds the active span's W3C trace context to `metadata`. */
export function injectTraceContext(metadata: Metadata, active: Context = context.active()): void {
  const headers = traceHeaders(active);
  if (!headers) return;
  metadata.set('traceparent', headers.traceparent);
  if (headers.tracestate) metadata.set('tracestate', headers.tracestate);
}

/** The W3C trace context of `active`'s span; undefined without a valid one. */
export function traceHeaders(active: Context): { traceparent: string; tracestate?: string } | undefined {
  const span = trace.getSpanContext(active);
  if (!span || !isSpanContextValid(span)) return undefined;
  const flags = (span.traceFlags & TraceFlags.SAMPLED).toString(16).padStart(2, '0');
  const traceparent = `00-${span.traceId}-${span.spanId}-${flags}`;
  const state = span.traceState?.serialize();
  return state ? { traceparent, tracestate: state } : { traceparent };
}

const TRACEPARENT = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/;

/** The context whose remote parent is a job's `trace_context`; the root context without one. */
export function extractTraceContext(carrier: Record<string, string>): Context {
  const match = TRACEPARENT.exec((carrier.traceparent ?? '').trim());
  if (!match || match[1] === 'ff') return ROOT_CONTEXT;
  const spanContext = {
    traceId: match[2]!,
    spanId: match[3]!,
    traceFlags: parseInt(match[4]!, 16) & TraceFlags.SAMPLED,
    isRemote: true,
    ...(carrier.tracestate ? { traceState: createTraceState(carrier.tracestate) } : {}),
  };
  return isSpanContextValid(spanContext) ? trace.setSpanContext(ROOT_CONTEXT, spanContext) : ROOT_CONTEXT;
}
