//! Loads jobd's protos (copied from the repository's proto/ at build time) and gives the typed
//! gRPC stubs. The loader options must match scripts/generate.mjs, which writes the types.
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { existsSync } from 'node:fs';
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
