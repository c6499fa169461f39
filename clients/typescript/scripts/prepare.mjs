// `prepare`: builds the package (generate + tsc), also when npm runs it for
// `npm install ./clients/typescript` from another project. npm links such a folder without
// installing the folder's own dependencies, so the build's tools (typescript,
// proto-loader-gen-types) are installed here first from package-lock.json when missing.
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const pkg = join(dirname(fileURLToPath(import.meta.url)), '..');
const tools = ['typescript/bin/tsc', '@grpc/proto-loader/build/bin/proto-loader-gen-types.js'];
const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';
const run = (command, args) => execFileSync(command, args, { cwd: pkg, stdio: 'inherit' });

if (!tools.every((tool) => existsSync(join(pkg, 'node_modules', tool)))) {
  run(npm, ['ci', '--include=dev', '--ignore-scripts', '--no-audit', '--no-fund']);
}
run(process.execPath, [join(pkg, 'scripts', 'generate.mjs')]);
run(process.execPath, [join(pkg, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(pkg, 'tsconfig.json')]);
