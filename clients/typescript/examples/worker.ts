// The ten-line worker: handles "resize" jobs from the "images" queue, 8 at a time, until
// SIGTERM or SIGINT, then shuts down gracefully. JOBD_ADDRESS and JOBD_TOKEN say where jobd is.
import { JobdClient, Worker } from '@jobd/client';

const client = new JobdClient({ address: process.env.JOBD_ADDRESS ?? '127.0.0.1:50051', token: process.env.JOBD_TOKEN });
const worker = new Worker(client, { queue: 'images', concurrency: 8 });
worker.handle('resize', async (job, ctx) => {
  const { url, width } = job.json<{ url: string; width: number }>();
  await ctx.progress(50, `resizing ${url}`);
  return { url, width, resized: !ctx.signal.aborted };
});
void worker.run().finally(() => client.close());
