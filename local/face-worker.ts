/**
 * Faces found in a worker thread. The detector (TensorFlow.js on WASM) computes for a fifth of a
 * second per image without yielding; on the main thread that stalls everything else a local run
 * does at the same time: the other personas of a batch, their turns, their image calls. One
 * worker for the process, started on first use, its models loaded once, holding the process open
 * only while it has work.
 */
import { Worker } from 'node:worker_threads';
import type { Face, FaceFinder } from '../lambdas/check-identity/faces.ts';

type Answer = { id: number; faces: Face[] } | { id: number; error: { name: string; message: string } };

let worker: Worker | undefined;
let nextId = 0;
const pending = new Map<number, { resolve: (faces: Face[]) => void; reject: (error: Error) => void }>();

function settle(answer: Answer): void {
  const waiting = pending.get(answer.id);
  pending.delete(answer.id);
  if (pending.size === 0) worker?.unref();
  if (!waiting) return;
  if ('faces' in answer) waiting.resolve(answer.faces);
  else waiting.reject(Object.assign(new Error(answer.error.message), { name: answer.error.name }));
}

function started(): Worker {
  if (worker) return worker;
  const thread = new Worker(new URL('./face-worker-thread.ts', import.meta.url));
  thread.on('message', settle);
  thread.on('error', (error) => {
    // A worker that died takes its work with it; the next call starts another.
    worker = undefined;
    for (const waiting of pending.values()) waiting.reject(error);
    pending.clear();
  });
  worker = thread;
  return thread;
}

const workerFaces: FaceFinder = {
  warmUp: () => {
    if (!worker) started().unref();
  },
  facesIn: (image) =>
    new Promise<Face[]>((resolve, reject) => {
      const id = nextId++;
      pending.set(id, { resolve, reject });
      const thread = started();
      thread.ref();
      thread.postMessage({ id, image: new Uint8Array(image) });
    }),
};

/** A client factory, as the stages' handlers list theirs: check-identity's faces, off the main thread. */
export function localFaceFinder(): { faces: FaceFinder } {
  return { faces: workerFaces };
}
