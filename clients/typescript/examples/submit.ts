// Submits "resize" jobs to the "images" queue and waits for each result.
import { JobFailedError, JobdClient } from '@jobd/client';

async function main(): Promise<void> {
  const client = new JobdClient({ address: process.env.JOBD_ADDRESS ?? '127.0.0.1:50051', token: process.env.JOBD_TOKEN });
  try {
    const count = Number(process.argv[2] ?? 3);
    const results = await Promise.all(Array.from({ length: count }, (_, i) =>
      client.submitAndWait({ queue: 'images', kind: 'resize', payload: { url: `https://example.com/${i}.png`, width: 100 } })));
    for (const result of results) console.log(JSON.stringify(result.json()));
  } catch (error) {
    if (error instanceof JobFailedError) console.error(`job ${error.jobId} failed: ${error.error}`);
    throw error;
  } finally {
    client.close();
  }
}

main().catch(() => (process.exitCode = 1));
