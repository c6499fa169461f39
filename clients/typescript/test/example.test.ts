import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { join } from 'node:path';
import { test } from 'node:test';

import { sharedJobd } from './harness';

const shared = sharedJobd();

test('the example worker serves the example submitter, and stops cleanly on SIGTERM', async () => {
  const { jobd, client } = shared;
  const env = { ...process.env, JOBD_ADDRESS: jobd.address };
  const examples = join(__dirname, '..', 'examples');
  const worker = spawn(process.execPath, [join(examples, 'worker.js')], { env, stdio: ['ignore', 'inherit', 'inherit'] });
  try {
    const submitter = spawn(process.execPath, [join(examples, 'submit.js'), '5'], { env, stdio: ['ignore', 'pipe', 'inherit'] });
    let output = '';
    submitter.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    const [code] = await once(submitter, 'exit');
    assert.equal(code, 0);
    const results = output.trim().split('\n').map((line) => JSON.parse(line));
    assert.equal(results.length, 5);
    assert.deepEqual(results[0], { url: 'https://example.com/0.png', width: 100, resized: true });

    const stats = await client.stats('images');
    assert.equal(stats.completed, 5);
  } finally {
    worker.kill('SIGTERM');
  }
  const [code, signal] = await once(worker, 'exit');
  assert.equal(signal, null, 'the worker exits by itself on SIGTERM');
  assert.equal(code, 0);
});
