//! The test harness: a redis-server and a jobd of the test's own, on free ports, stopped at the
//! end (`sharedJobd` for one shared by a file's tests); a TCP proxy a test can cut (`Proxy`);
//! and `waitFor`, the one way to wait on an observable condition.
import * as grpc from '@grpc/grpc-js';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, before, type TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import { JobdClient, Worker, type ClientOptions, type WorkerOptions } from '../src';

/** The repository's root: this file is built to clients/typescript/build/test/. */
const REPO_ROOT = resolve(__dirname, '..', '..', '..', '..');

/** The jobd binary: $JOBD_BIN, else target/debug/jobd, built when missing. */
export function jobdBinary(): string {
  if (process.env.JOBD_BIN) return process.env.JOBD_BIN;
  const binary = join(REPO_ROOT, 'target', 'debug', 'jobd');
  if (!existsSync(binary)) {
    execFileSync('cargo', ['build', '--locked', '--bin', 'jobd'], { cwd: REPO_ROOT, stdio: 'inherit' });
  }
  return binary;
}

/** Polls `condition` every 20 ms until it holds (returns a truthy value) or `timeoutMs` passes. */
export async function waitFor<T>(what: string, condition: () => T | Promise<T>, timeoutMs = 10_000): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await condition();
    if (value) return value as NonNullable<T>;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(20);
  }
}

export async function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const probe = createServer().listen(0, '127.0.0.1', () => {
      const address = probe.address();
      if (address && typeof address === 'object') probe.close(() => resolvePort(address.port));
      else reject(new Error('no port'));
    });
  });
}

/** A redis-server of the test's own, without persistence. */
export class Redis {
  private constructor(
    readonly port: number,
    readonly process: ChildProcess,
    private readonly dir: string,
  ) {}

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  static async start(): Promise<Redis> {
    const port = await freePort();
    const dir = mkdtempSync(join(tmpdir(), 'jobd-ts-redis-'));
    const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir], {
      stdio: 'ignore',
    });
    const redis = new Redis(port, child, dir);
    await waitFor('redis-server to answer PING', () => redis.ping());
    return redis;
  }

  /** Whether Redis answers PING now. */
  ping(): Promise<boolean> {
    return new Promise((resolvePing) => {
      const socket = connect(this.port, '127.0.0.1');
      socket.setTimeout(500);
      socket.on('connect', () => socket.write('PING\r\n'));
      socket.on('data', (data) => {
        resolvePing(data.toString().startsWith('+PONG'));
        socket.destroy();
      });
      socket.on('error', () => resolvePing(false));
      socket.on('timeout', () => {
        resolvePing(false);
        socket.destroy();
      });
    });
  }

  /** One command through redis-cli; its reply as text. */
  command(...args: string[]): string {
    return execFileSync('redis-cli', ['-p', String(this.port), ...args]).toString().trim();
  }

  pause(): void {
    this.process.kill('SIGSTOP');
  }

  resume(): void {
    this.process.kill('SIGCONT');
  }

  stop(): void {
    this.process.kill('SIGCONT');
    this.process.kill('SIGKILL');
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** A jobd on a free port against `redis`; restartable on the same port. */
export class Jobd {
  private child: ChildProcess | undefined;
  private exited: Promise<void> = Promise.resolve();
  private credentials = grpc.credentials.createInsecure();
  private constructor(
    readonly port: number,
    readonly redis: Redis,
    readonly args: string[],
  ) {}

  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  /** The jobd process's id, while it runs. */
  get pid(): number | undefined {
    return this.child?.pid;
  }

  /** Starts Redis and jobd (with `args` added to its command line) and waits until SERVING. */
  static async start(args: string[] = [], options: { credentials?: grpc.ChannelCredentials } = {}): Promise<Jobd> {
    const redis = await Redis.start();
    const jobd = new Jobd(await freePort(), redis, args);
    jobd.credentials = options.credentials ?? grpc.credentials.createInsecure();
    await jobd.launch();
    return jobd;
  }

  /** Starts the jobd process and waits until its health check says SERVING. */
  async launch(): Promise<void> {
    const child = spawn(jobdBinary(), ['--listen', this.address, '--redis-url', this.redis.url, ...this.args], {
      stdio: ['ignore', 'ignore', process.env.JOBD_LOG ? 'inherit' : 'ignore'],
      // As deployed (Dockerfile, deploy/): memory committed as used, not eagerly in huge pages,
      // which jobd would otherwise spend its CPU zeroing (BENCHMARKS.md).
      env: {
        ...process.env,
        RUST_LOG: process.env.RUST_LOG ?? 'warn',
        MIMALLOC_ARENA_EAGER_COMMIT: process.env.MIMALLOC_ARENA_EAGER_COMMIT ?? '0',
      },
    });
    this.child = child;
    this.exited = new Promise((resolveExit) => child.once('exit', () => resolveExit()));
    const health = new grpc.Client(this.address, this.credentials);
    try {
      await waitFor('jobd to be SERVING', async () => {
        if (child.exitCode !== null) throw new Error(`jobd exited with ${child.exitCode}`);
        return (await healthStatus(health)) === 1;
      }, 30_000);
    } finally {
      health.close();
    }
  }

  /** Stops jobd with SIGTERM (its graceful shutdown) and waits until it exited. */
  async terminate(): Promise<void> {
    this.child?.kill('SIGTERM');
    await this.exited;
  }

  /** jobd stopped and started again on the same port and Redis. */
  async restart(): Promise<void> {
    await this.terminate();
    await this.launch();
  }

  client(options: ClientOptions = {}): JobdClient {
    return new JobdClient({ address: this.address, ...options });
  }

  async stop(): Promise<void> {
    this.child?.kill('SIGKILL');
    await this.exited;
    this.redis.stop();
  }
}

/** What `sharedJobd` gives the tests of a file. */
export interface SharedJobd {
  readonly jobd: Jobd;
  readonly client: JobdClient;
  /**
   * A worker on the shared client, closed when test `t` ends (closing is idempotent): signals
   * left to the test runner and 1 s claim waits, unless `options` say otherwise.
   */
  worker(t: TestContext, options: WorkerOptions): Worker;
}

/**
 * A jobd (and its Redis) and a client, shared by the tests of one file: started before its
 * first test, stopped after its last. Read them inside tests, once `before` has run.
 */
export function sharedJobd(args: string[] = [], clientOptions: ClientOptions = {}): SharedJobd {
  let started: { jobd: Jobd; client: JobdClient } | undefined;
  before(async () => {
    const jobd = await Jobd.start(args);
    started = { jobd, client: jobd.client(clientOptions) };
  });
  after(async () => {
    started?.client.close();
    await started?.jobd.stop();
  });
  const running = () => {
    if (!started) throw new Error('the shared jobd is read before the file\'s `before` hook ran');
    return started;
  };
  return {
    get jobd() {
      return running().jobd;
    },
    get client() {
      return running().client;
    },
    worker(t, options) {
      const worker = new Worker(running().client, { claimWaitMs: 1000, handleSignals: false, ...options });
      t.after(() => worker.close());
      return worker;
    },
  };
}

/** grpc.health.v1.Health/Check for "" : the status number (1 SERVING), or 0 on any failure. */
function healthStatus(client: grpc.Client): Promise<number> {
  return new Promise((resolveStatus) => {
    client.makeUnaryRequest(
      '/grpc.health.v1.Health/Check',
      () => Buffer.alloc(0),
      (bytes: Buffer) => bytes,
      {},
      { deadline: new Date(Date.now() + 1000) },
      (error, response) => {
        // HealthCheckResponse { status = 1 }: field 1, varint.
        if (error || !response) resolveStatus(0);
        else resolveStatus(response.length >= 2 && response[0] === 0x08 ? response[1]! : 0);
      },
    );
  });
}

/** A queue name unique to the test. */
export function queueName(prefix: string): string {
  return `${prefix}-${Math.random().toString(36).slice(2, 8)}`;
}

// jobd's Redis keys as src/store/keys.rs builds them (default prefix), for the tests that reach
// past jobd into its Redis.
export const DUE_INDEX = 'jobd:{:queues}:due';

/** The hash holding a job: `jobd:{<queue>}:job:<ulid>` for job id `<queue>.<ulid>`. */
export function jobKey(jobId: string): string {
  const dot = jobId.lastIndexOf('.');
  return `jobd:{${jobId.slice(0, dot)}}:job:${jobId.slice(dot + 1)}`;
}

/**
 * A TCP proxy in front of jobd: `cut()` resets every connection through it (new ones are
 * accepted); `close()` also stops listening (connections are refused, as by a jobd that is
 * down) until `open()`, on the same port; `holdReplies` drops what jobd sends;
 * `cancelNextCall()` makes the next call jobd answers end with RST_STREAM(CANCEL) after its
 * response headers, as a connection reset does in some transports (CANCELLED in grpc-js).
 * It relays jobd's side an HTTP/2 frame at a time (9-byte headers: length, type, flags,
 * stream); `answered` counts the calls jobd answered through it: a HEADERS frame (type 1) of a
 * stream without END_STREAM (flag 1) is a call's response headers.
 */
export class Proxy {
  answered = 0;
  /** While true, what jobd sends is dropped: calls go out, their replies never come. */
  holdReplies = false;
  private cancelling = false;
  private readonly sockets = new Set<Socket>();
  private server: Server | undefined;

  private constructor(
    readonly port: number,
    private readonly upstream: number,
  ) {}

  static async start(upstream: number): Promise<Proxy> {
    const proxy = new Proxy(await freePort(), upstream);
    await proxy.open();
    return proxy;
  }

  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  /** Listens (again) on its port. */
  async open(): Promise<void> {
    const server = createServer((inbound) => this.relay(inbound));
    this.server = server;
    await new Promise<void>((listening) => server.listen(this.port, '127.0.0.1', listening));
  }

  /** Resets every connection through it. */
  cut(): void {
    for (const socket of this.sockets) socket.resetAndDestroy();
    this.sockets.clear();
  }

  cancelNextCall(): void {
    this.cancelling = true;
  }

  /** Stops listening and resets every connection through it. */
  async close(): Promise<void> {
    this.cut();
    const server = this.server;
    this.server = undefined;
    if (server?.listening) await new Promise((closed) => server.close(closed));
  }

  private relay(inbound: Socket): void {
    const outbound = connect(this.upstream, '127.0.0.1');
    // Streams reset by `cancelNextCall`: jobd hears of it too; their DATA is dropped, the rest
    // (headers that keep HPACK's state in step) goes on, and the client ignores it.
    const cancelled = new Set<number>();
    // The client's connection preface (24 bytes) comes before its first frame.
    onFrames(inbound, 24, (frame) => outbound.write(frame));
    onFrames(outbound, 0, (frame) => {
      if (this.holdReplies) return;
      const [type, flags, stream] = [frame[3]!, frame[4]!, frame.readUInt32BE(5) & 0x7fffffff];
      if (type === 0 && cancelled.has(stream)) return;
      inbound.write(frame);
      if (type !== 1 || (flags & 1) !== 0 || stream === 0) return;
      this.answered++;
      if (this.cancelling) {
        this.cancelling = false;
        cancelled.add(stream);
        // RST_STREAM (type 3) with CANCEL (8), to both ends.
        const reset = Buffer.from([0, 0, 4, 3, 0, 0, 0, 0, 0, 0, 0, 0, 8]);
        reset.writeUInt32BE(stream, 5);
        inbound.write(reset);
        outbound.write(reset);
      }
    });
    for (const socket of [inbound, outbound]) {
      this.sockets.add(socket);
      socket.on('error', () => {});
      socket.on('close', () => {
        this.sockets.delete(socket);
        inbound.destroy();
        outbound.destroy();
      });
    }
  }
}

/**
 * Calls `frame` with each whole HTTP/2 frame `socket` reads (9-byte header: 24-bit length,
 * type, flags, stream), after `skip` bytes passed on as they come (a connection preface).
 */
function onFrames(socket: Socket, skip: number, frame: (bytes: Buffer) => void): void {
  let pending: Buffer = Buffer.alloc(0);
  socket.on('data', (chunk: Buffer) => {
    if (skip > 0) {
      const passed = chunk.subarray(0, skip);
      skip -= passed.length;
      frame(passed);
      chunk = chunk.subarray(passed.length);
    }
    pending = pending.length > 0 ? Buffer.concat([pending, chunk]) : chunk;
    while (pending.length >= 9 && pending.length >= 9 + pending.readUIntBE(0, 3)) {
      const whole = pending.subarray(0, 9 + pending.readUIntBE(0, 3));
      pending = pending.subarray(whole.length);
      frame(whole);
    }
  });
}
