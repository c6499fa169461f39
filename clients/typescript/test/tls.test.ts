import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';

import * as grpc from '@grpc/grpc-js';

import { JobdError } from '../src';
import { Jobd } from './harness';

let dir: string;
let jobd: Jobd;

/** A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl. */
function makeCertificates(): void {
  const openssl = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'ignore' });
  openssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1',
    '-subj', '/CN=test-ca', '-keyout', 'ca-key.pem', '-out', 'ca.pem');
  for (const [name, san] of [['server', 'IP:127.0.0.1'], ['client', 'URI:spiffe://test/ts-client']] as const) {
    openssl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-subj', `/CN=${name}`,
      '-keyout', `${name}-key.pem`, '-out', `${name}.csr`);
    writeFileSync(join(dir, `${name}.ext`), `subjectAltName=${san}\n`);
    openssl('x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca-key.pem', '-CAcreateserial', '-days', '1',
      '-extfile', `${name}.ext`, '-out', `${name}.pem`);
  }
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'jobd-ts-tls-'));
  makeCertificates();
  const file = (name: string) => join(dir, name);
  jobd = await Jobd.start(
    ['--tls-cert-file', file('server.pem'), '--tls-key-file', file('server-key.pem'), '--tls-client-ca-file', file('ca.pem')],
    { credentials: grpc.credentials.createSsl(readFileSync(file('ca.pem')), readFileSync(file('client-key.pem')), readFileSync(file('client.pem'))) },
  );
});

after(async () => {
  await jobd.stop();
  rmSync(dir, { recursive: true, force: true });
});

test('TLS with a CA file and a client certificate (mTLS)', async () => {
  const client = jobd.client({
    tls: { caFile: join(dir, 'ca.pem'), certFile: join(dir, 'client.pem'), keyFile: join(dir, 'client-key.pem') },
  });
  try {
    const submitted = await client.submit({ queue: 'tls', kind: 'k', payload: 'over TLS' });
    assert.equal((await client.get(submitted.id)).payload.toString(), 'over TLS');
  } finally {
    client.close();
  }
});

test('without a client certificate the handshake fails: UNAVAILABLE', async () => {
  const client = jobd.client({ tls: { caFile: join(dir, 'ca.pem') }, retry: { maxAttempts: 1 } });
  try {
    const refused = await client.stats('tls').then(() => assert.fail('should fail'), (error: unknown) => error);
    assert.ok(refused instanceof JobdError, String(refused));
    assert.equal(refused.code, grpc.status.UNAVAILABLE);
  } finally {
    client.close();
  }
});
