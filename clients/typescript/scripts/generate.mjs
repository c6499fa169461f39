// Generates the gRPC types from the repository's proto/ at build time, so they cannot drift
// from the API: copies proto/jobd (and docs/service-config.json) into this package (proto-loader reads it at run time, and a
// packed tarball carries it), then writes TypeScript types with proto-loader-gen-types into
// src/generated. Both are build output, ignored by git.
import { execFileSync } from 'node:child_process';
import { cpSync, existsSync, readdirSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const pkg = join(dirname(fileURLToPath(import.meta.url)), '..');
const repoProto = join(pkg, '..', '..', 'proto');
const ownProto = join(pkg, 'proto');
// The published gRPC service config (docs/api.md), whose retry policy and timeouts the client uses.
const repoServiceConfig = join(pkg, '..', '..', 'docs', 'service-config.json');
const ownServiceConfig = join(ownProto, 'service-config.json');

if (existsSync(join(repoProto, 'jobd'))) {
  rmSync(ownProto, { recursive: true, force: true });
  cpSync(join(repoProto, 'jobd'), join(ownProto, 'jobd'), { recursive: true });
  cpSync(repoServiceConfig, ownServiceConfig);
} else if (!existsSync(join(ownProto, 'jobd')) || !existsSync(ownServiceConfig)) {
  throw new Error(`no protos: neither ${repoProto} nor ${ownProto} holds jobd/ and the service config`);
}

const files = readdirSync(join(ownProto, 'jobd', 'v1'))
  .filter((name) => name.endsWith('.proto'))
  .map((name) => join('jobd', 'v1', name));
const out = join(pkg, 'src', 'generated');
rmSync(out, { recursive: true, force: true });
const bin = join(pkg, 'node_modules', '@grpc', 'proto-loader', 'build', 'bin', 'proto-loader-gen-types.js');
// The options must match the loader's (src/proto.ts).
execFileSync(process.execPath, [
  bin, '--grpcLib=@grpc/grpc-js', '--longs=Number', '--enums=String', '--defaults', '--oneofs',
  '--includeDirs', ownProto, '--outDir', out, ...files,
], { stdio: 'inherit' });
