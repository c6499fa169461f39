// BullMQ on the same machine and the same Redis as jobd-bench's lifecycle scenario, so that
// "faster than BullMQ" is a measurement (BENCHMARKS.md, "Against BullMQ"). N jobs; P submitters,
// each adding a batch (addBulk) and waiting for every job of it to finish (waitUntilFinished on
// one QueueEvents stream, BullMQ's way to watch jobs); W workers with a no-op handler, each
// running up to C jobs at once; BullMQ's defaults otherwise. Every run on a fresh redis-server
// (or the one at --redis-url, flushed), after a warm-up. Reports jobs/s, submit-to-finished
// latency, and Redis commands and CPU per job as jobd-bench's redis-cost measures them: INFO
// commandstats and used_cpu_user + used_cpu_sys, delta over the measured run, divided by N.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Queue, QueueEvents, Worker } from 'bullmq';
import IORedis from 'ioredis';

const { values: opt } = parseArgs({
  options: {
    'redis-url': { type: 'string' },
    jobs: { type: 'string', default: '20000' },
    'in-flight': { type: 'string', default: '64' },
    'submit-batch': { type: 'string', default: '8' },
    workers: { type: 'string', default: '16' },
    concurrency: { type: 'string', default: '8' },
    runs: { type: 'string', default: '3' },
    small: { type: 'boolean', default: false },
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

/// A redis-server of the benchmark's own, as jobd-bench starts it: no persistence.
async function startRedis() {
  const port = await new Promise((resolve) => {
    const probe = createServer().listen(0, '127.0.0.1', () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
  const dir = mkdtempSync(join(tmpdir(), 'bullmq-bench-'));
  const child = spawn('redis-server', [
    '--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
    '--loglevel', 'warning', '--dir', dir,
  ], { stdio: 'ignore' });
  const url = `redis://127.0.0.1:${port}`;
  for (let tries = 0; ; tries++) {
    const probe = new IORedis(url, { lazyConnect: true, retryStrategy: () => null });
    // Refused while the server starts: connect() says so, the event need not.
    probe.on('error', () => {});
    try {
      await probe.connect();
      await probe.quit();
      break;
    } catch (error) {
      probe.disconnect();
      if (tries > 100) throw new Error(`redis-server did not start: ${error}`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
  return { url, stop: () => { child.kill(); rmSync(dir, { recursive: true, force: true }); } };
}

/// Redis's CPU seconds and the commands it ran so far.
async function redisCounters(admin) {
  const text = await admin.info('all');
  const field = (name) => Number(text.match(new RegExp(`^${name}:([0-9.]+)`, 'm'))[1]);
  let commands = 0;
  for (const match of text.matchAll(/^cmdstat_[^:]+:calls=(\d+)/gm)) commands += Number(match[1]);
  return { cpu: field('used_cpu_user') + field('used_cpu_sys'), commands };
}

/// This process's CPU seconds so far (user + system).
function nodeCpu() {
  const { user, system } = process.cpuUsage();
  return (user + system) / 1e6;
}

/// `jobs` jobs through the queue, `sizes.inFlight` submitters at a time.
async function lifecycle(queue, events, jobs) {
  let next = 0;
  const latencies = [];
  async function submitter() {
    while (next < jobs) {
      const count = Math.min(sizes.submitBatch, jobs - next);
      next += count;
      const sent = process.hrtime.bigint();
      const added = count === 1
        ? [await queue.add('bench', {})]
        : await queue.addBulk(Array.from({ length: count }, () => ({ name: 'bench', data: {} })));
      await Promise.all(added.map(async (job) => {
        await job.waitUntilFinished(events);
        latencies.push(Number(process.hrtime.bigint() - sent) / 1e6);
      }));
    }
  }
  const started = process.hrtime.bigint();
  await Promise.all(Array.from({ length: sizes.inFlight }, submitter));
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  latencies.sort((a, b) => a - b);
  const at = (q) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))];
  return { seconds, p50_ms: at(0.5), p99_ms: at(0.99) };
}

async function run() {
  const redis = opt['redis-url'] ? { url: opt['redis-url'], stop: () => {} } : await startRedis();
  const admin = new IORedis(redis.url);
  await admin.flushall();
  // Connection settings rather than clients, so that BullMQ makes and closes its own.
  const { hostname: host, port } = new URL(redis.url);
  const connection = { host, port: Number(port), maxRetriesPerRequest: null };
  const name = 'bench';
  const queue = new Queue(name, { connection });
  // Every job waited for listens to the queue's closing: hundreds at once, by design.
  queue.setMaxListeners(0);
  const events = new QueueEvents(name, { connection });
  await events.waitUntilReady();
  const workers = Array.from({ length: sizes.workers }, () => new Worker(name, async () => 'done', {
    connection, concurrency: sizes.concurrency,
  }));
  await lifecycle(queue, events, Math.max(200, sizes.jobs / 10));
  const before = { ...(await redisCounters(admin)), node: nodeCpu() };
  const result = await lifecycle(queue, events, sizes.jobs);
  const after = { ...(await redisCounters(admin)), node: nodeCpu() };
  await Promise.all(workers.map((worker) => worker.close()));
  await Promise.all([events.close(), queue.close()]);
  await admin.quit();
  redis.stop();
  return {
    jobs_per_sec: sizes.jobs / result.seconds,
    p50_ms: result.p50_ms,
    p99_ms: result.p99_ms,
    commands_per_job: (after.commands - before.commands) / sizes.jobs,
    redis_cpu_us_per_job: ((after.cpu - before.cpu) * 1e6) / sizes.jobs,
    node_cpu_us_per_job: ((after.node - before.node) * 1e6) / sizes.jobs,
  };
}

const runs = [];
for (let i = 0; i < sizes.runs; i++) runs.push(await run());
const median = (values) => values.sort((a, b) => a - b)[Math.floor(values.length / 2)];
const report = {
  scenario: 'bullmq-lifecycle',
  jobs: sizes.jobs,
  in_flight: sizes.inFlight,
  submit_batch: sizes.submitBatch,
  workers: sizes.workers,
  concurrency: sizes.concurrency,
  runs: runs.length,
};
const spread = {};
for (const figure of Object.keys(runs[0])) {
  const values = runs.map((r) => r[figure]);
  report[figure] = median([...values]);
  spread[figure] = [Math.min(...values), Math.max(...values)];
}
report.spread = spread;
console.log('\nbullmq-lifecycle');
for (const [figure, value] of Object.entries(report)) {
  if (figure === 'spread') continue;
  const shown = Number.isInteger(value) || typeof value !== 'number' ? value : value.toFixed(3);
  console.log(`  ${figure.padEnd(22)}${shown}`);
}
console.log(`  ${'spread'.padEnd(22)}${JSON.stringify(spread)}`);
console.log(JSON.stringify(report));
