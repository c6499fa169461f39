// The lifecycle of bench/bullmq/lifecycle.mjs with @jobd/client, each side in its natural form:
// N jobs; P submitters, each awaiting `submitAndWait` of a batch of B jobs at once (as BullMQ's
// add a batch and wait for each of its jobs), batch after batch; W workers
// (a JobdClient each, as separate processes would have) with a no-op handler and `concurrency`
// C. A fresh redis-server and jobd per run (--jobd, else $JOBD_BIN, else target/release/jobd),
// after a warm-up. Reports jobs/s, submit-to-result latency, and Redis commands and CPU per job
// (INFO deltas over the measured run, as bench/bullmq measures them).
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';

import { JobdClient, Worker } from '../src';
import { Jobd } from '../test/harness';

const { values: opt } = parseArgs({
  options: {
    jobd: { type: 'string' },
    jobs: { type: 'string', default: '20000' },
    'in-flight': { type: 'string', default: '64' },
    'submit-batch': { type: 'string', default: '8' },
    workers: { type: 'string', default: '16' },
    concurrency: { type: 'string', default: '8' },
    runs: { type: 'string', default: '3' },
    small: { type: 'boolean', default: false },
    // Submit without the idempotency keys the client generates to retry submissions safely
    // (retries off): what keyed submissions cost jobd and Redis.
    'no-generated-keys': { type: 'boolean', default: false },
  },
});
const sizes = {
  jobs: opt.small ? 1000 : Number(opt.jobs),
  inFlight: Number(opt['in-flight']),
  submitBatch: Number(opt['submit-batch']),
  workers: Number(opt.workers),
  concurrency: Number(opt.concurrency),
  runs: opt.small ? 1 : Number(opt.runs),
};
const release = resolve(__dirname, '..', '..', '..', '..', 'target', 'release', 'jobd');
process.env.JOBD_BIN = opt.jobd ?? process.env.JOBD_BIN ?? (existsSync(release) ? release : '');
if (!process.env.JOBD_BIN) delete process.env.JOBD_BIN;

/** Redis's CPU seconds and the commands it ran so far. */
function redisCounters(port: number): { cpu: number; commands: number } {
  const text = execFileSync('redis-cli', ['-p', String(port), 'INFO', 'all']).toString();
  const field = (name: string) => Number(new RegExp(`^${name}:([0-9.]+)`, 'm').exec(text)?.[1] ?? NaN);
  let commands = 0;
  for (const match of text.matchAll(/^cmdstat_[^:]+:calls=(\d+)/gm)) commands += Number(match[1]);
  return { cpu: field('used_cpu_user') + field('used_cpu_sys'), commands };
}

/** A process's CPU seconds so far (user + system), from /proc/<pid>/stat. */
function processCpu(pid: number | undefined): number {
  if (pid === undefined || !existsSync(`/proc/${pid}/stat`)) return NaN;
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /, '').split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime in clock ticks (USER_HZ 100)
}

/** This process's CPU seconds so far. */
function nodeCpu(): number {
  const { user, system } = process.cpuUsage();
  return (user + system) / 1e6;
}

async function lifecycle(client: JobdClient, queue: string, jobs: number) {
  let next = 0;
  const latencies: number[] = [];
  async function submitter(): Promise<void> {
    while (next < jobs) {
      const count = Math.min(sizes.submitBatch, jobs - next);
      next += count;
      const sent = process.hrtime.bigint();
      await Promise.all(Array.from({ length: count }, async () => {
        await client.submitAndWait({ queue, kind: 'bench' });
        latencies.push(Number(process.hrtime.bigint() - sent) / 1e6);
      }));
    }
  }
  const started = process.hrtime.bigint();
  await Promise.all(Array.from({ length: sizes.inFlight }, submitter));
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  latencies.sort((a, b) => a - b);
  const at = (q: number) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))]!;
  return { seconds, p50_ms: at(0.5), p99_ms: at(0.99) };
}

async function run() {
  const jobd = await Jobd.start();
  const queue = 'bench';
  const submitters = jobd.client(opt['no-generated-keys'] ? { retry: { maxAttempts: 1 } } : {});
  const clients = Array.from({ length: sizes.workers }, () => jobd.client());
  const workers = clients.map((client) => {
    const worker = new Worker(client, { queue, concurrency: sizes.concurrency, handleSignals: false, logger: { warn: () => {} } });
    worker.handle('bench', () => 'done');
    worker.start();
    return worker;
  });
  await lifecycle(submitters, queue, Math.max(200, sizes.jobs / 10));
  const before = { ...redisCounters(jobd.redis.port), node: nodeCpu(), jobd: processCpu(jobd.pid) };
  const result = await lifecycle(submitters, queue, sizes.jobs);
  const after = { ...redisCounters(jobd.redis.port), node: nodeCpu(), jobd: processCpu(jobd.pid) };
  await Promise.all(workers.map((worker) => worker.close()));
  for (const client of [submitters, ...clients]) client.close();
  await jobd.stop();
  return {
    jobs_per_sec: sizes.jobs / result.seconds,
    p50_ms: result.p50_ms,
    p99_ms: result.p99_ms,
    commands_per_job: (after.commands - before.commands) / sizes.jobs,
    redis_cpu_us_per_job: ((after.cpu - before.cpu) * 1e6) / sizes.jobs,
    node_cpu_us_per_job: ((after.node - before.node) * 1e6) / sizes.jobs,
    jobd_cpu_us_per_job: ((after.jobd - before.jobd) * 1e6) / sizes.jobs,
  };
}

async function main(): Promise<void> {
  const runs: Record<string, number>[] = [];
  for (let i = 0; i < sizes.runs; i++) runs.push(await run());
  const median = (values: number[]) => values.sort((a, b) => a - b)[Math.floor(values.length / 2)]!;
  const report: Record<string, unknown> = {
    scenario: opt['no-generated-keys'] ? 'jobd-client-ts-lifecycle-no-keys' : 'jobd-client-ts-lifecycle',
    jobs: sizes.jobs,
    in_flight: sizes.inFlight,
    submit_batch: sizes.submitBatch,
    workers: sizes.workers,
    concurrency: sizes.concurrency,
    runs: runs.length,
  };
  const spread: Record<string, [number, number]> = {};
  for (const figure of Object.keys(runs[0]!)) {
    const values = runs.map((r) => r[figure]!);
    report[figure] = median([...values]);
    spread[figure] = [Math.min(...values), Math.max(...values)];
  }
  report.spread = spread;
  console.log('\njobd-client-ts-lifecycle');
  for (const [figure, value] of Object.entries(report)) {
    if (figure === 'spread') continue;
    const shown = typeof value === 'number' && !Number.isInteger(value) ? value.toFixed(3) : value;
    console.log(`  ${figure.padEnd(22)}${shown}`);
  }
  console.log(`  ${'spread'.padEnd(22)}${JSON.stringify(spread)}`);
  console.log(JSON.stringify(report));
}

void main();
