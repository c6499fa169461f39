//! What a job event says about the job's end.
import type { JobEvent__Output as JobEvent } from './generated/jobd/v1/JobEvent';

const TERMINAL_EVENTS = new Set(['EVENT_TYPE_COMPLETED', 'EVENT_TYPE_FAILED', 'EVENT_TYPE_CANCELLED']);

/** Whether an event is a job's last (COMPLETED, FAILED or CANCELLED). */
export function isTerminal(event: JobEvent): boolean {
  return TERMINAL_EVENTS.has(event.type);
}
