//! Loads jobd's protos (copied from the repository's proto/ at build time) and gives the typed
//! gRPC stubs. The loader options must match scripts/generate.mjs, which writes the types.
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

import type { ProtoGrpcType as JobServiceProto } from './generated/job_service';
import type { ProtoGrpcType as WorkerServiceProto } from './generated/worker_service';
import type { JobServiceClient } from './generated/jobd/v1/JobService';
import type { WorkerServiceClient } from './generated/jobd/v1/WorkerService';

export type { JobServiceClient, WorkerServiceClient };

// The package's proto/ (written by the build): next to dist/, or two levels up from the test
// build's build/src/.
const PROTO_DIR = [join(__dirname, '..', 'proto'), join(__dirname, '..', '..', 'proto')].find((dir) =>
  existsSync(join(dir, 'jobd', 'v1', 'job_service.proto')),
) ?? join(__dirname, '..', 'proto');

const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: false,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [PROTO_DIR],
};

interface Stubs {
  JobService: JobServiceProto['jobd']['v1']['JobService'];
  WorkerService: WorkerServiceProto['jobd']['v1']['WorkerService'];
}

let loaded: Stubs | undefined;

/** docs/service-config.json as gRPC defines it: per-method timeouts and retry policies. */
export interface ServiceConfig {
  methodConfig: {
    name: { service: string; method?: string }[];
    timeout?: string;
    retryPolicy?: { maxAttempts: number; initialBackoff: string; maxBackoff: string; backoffMultiplier: number };
  }[];
}

let serviceConfigLoaded: ServiceConfig | undefined;

/** The published service config, copied into the package by the build. */
export function serviceConfig(): ServiceConfig {
  serviceConfigLoaded ??= JSON.parse(readFileSync(join(PROTO_DIR, 'service-config.json'), 'utf8')) as ServiceConfig;
  return serviceConfigLoaded;
}

/** A service config duration ("0.1s") in ms. */
export function durationMs(text: string): number {
  return Math.round(parseFloat(text) * 1000);
}

/** The service constructors, loaded once per process (they are immutable descriptors). */
export function stubs(): Stubs {
  if (!loaded) {
    const definition = protoLoader.loadSync(
      ['jobd/v1/job_service.proto', 'jobd/v1/worker_service.proto'],
      LOADER_OPTIONS,
    );
    const root = grpc.loadPackageDefinition(definition) as unknown as JobServiceProto & WorkerServiceProto;
    loaded = { JobService: root.jobd.v1.JobService, WorkerService: root.jobd.v1.WorkerService };
  }
  return loaded;
}
