/** The worker of face-worker.ts: finds the faces in each image it is sent, one message each. */
import { parentPort } from 'node:worker_threads';
import { facesIn, models } from '../lambdas/check-identity/faces.ts';

// Loaded at once: a thread is started when a run starts (warmUp) or a face is asked for.
models().catch(() => undefined);

parentPort!.on('message', async ({ id, image }: { id: number; image: Uint8Array }) => {
  try {
    parentPort!.postMessage({ id, faces: await facesIn(Buffer.from(image.buffer, image.byteOffset, image.length)) });
  } catch (error) {
    parentPort!.postMessage({ id, error: { name: (error as Error).name, message: (error as Error).message } });
  }
});
