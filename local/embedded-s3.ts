import { mkdirSync } from 'node:fs';
import { rename } from 'node:fs/promises';
import { createRequire } from 'node:module';
import S3rver from 's3rver';
import type { S3Notification } from '../lambdas/start-from-upload/core.ts';

export interface EmbeddedS3 {
  endpoint: string;
  accessKey: string;
  secretKey: string;
  /** Calls `listener` with an S3 event notification for every object written or removed. */
  onNotification(listener: (event: S3Notification) => void): void;
  close(): Promise<void>;
}

/** S3 URL-encodes keys in notifications (spaces as '+'); s3rver sends them raw. */
function encodeKey(key: string): string {
  return key.split('/').map((part) => encodeURIComponent(part).replace(/%20/g, '+')).join('/');
}

interface FilesystemStore {
  getResourcePath(bucket: string, key: string, kind: string): string;
  /** `content` is the PUT request itself. */
  putObject(object: { bucket: string; key: string; content?: { headers?: Record<string, unknown> } }): Promise<unknown>;
  getObject(bucket: string, key: string, options?: unknown): Promise<unknown>;
  existsObject(bucket: string, key: string): Promise<boolean>;
  deleteObject(bucket: string, key: string): Promise<void>;
}

/** What S3 answers a conditional write whose key exists: 412, as s3rver's own errors are made. */
function preconditionFailed(): Error {
  const S3Error = createRequire(import.meta.url)('s3rver/lib/models/error') as new (code: string, message: string, detail: Record<string, string>) => Error;
  return new S3Error('PreconditionFailed', 'At least one of the pre-conditions you specified did not hold', { Condition: 'If-None-Match' });
}

/**
 * S3 replaces an object whole: a reader sees the old version or the new one. s3rver writes in
 * place, so two writers of one key (two runs publishing the current manifest) can interleave and
 * leave neither. Each write goes to a key of its own first, then is renamed over the object.
 * s3rver's read takes the object's size, then opens it: a rename in between sends a body of
 * another length, which the client sees as an aborted response. So a key's renames and its reads
 * up to the open take turns; once open, a read keeps the version it opened. A write with
 * `If-None-Match: *` (S3's conditional write) is refused with 412 when the key exists, checked in
 * the key's turn, so of two such writers exactly one wins, as on S3.
 */
function atomicPuts(store: FilesystemStore): void {
  const put = store.putObject.bind(store);
  const get = store.getObject.bind(store);
  const turns = new Map<string, Promise<unknown>>();
  const inTurn = <T>(id: string, work: () => Promise<T>): Promise<T> => {
    const done = (turns.get(id) ?? Promise.resolve()).then(work, work);
    const settled = done.catch(() => undefined);
    turns.set(id, settled);
    void settled.then(() => turns.get(id) === settled && turns.delete(id));
    return done;
  };
  let counter = 0;
  store.putObject = async (object) => {
    const staging = `${object.key}.put-${process.pid}-${++counter}`;
    const result = await put({ ...object, key: staging });
    const ifNoneMatch = object.content?.headers?.['if-none-match'] === '*';
    await inTurn(`${object.bucket}/${object.key}`, async () => {
      if (ifNoneMatch && (await store.existsObject(object.bucket, object.key))) {
        await store.deleteObject(object.bucket, staging);
        throw preconditionFailed();
      }
      for (const resource of ['metadata.json', 'object.md5', 'object']) {
        await rename(store.getResourcePath(object.bucket, staging, resource), store.getResourcePath(object.bucket, object.key, resource));
      }
    });
    return result;
  };
  store.getObject = (bucket, key, options) => inTurn(`${bucket}/${key}`, () => get(bucket, key, options));
}

/** An S3-compatible server on loopback, its data in `directory`, for runs without AWS. */
export async function startEmbeddedS3(directory: string, bucket: string): Promise<EmbeddedS3> {
  mkdirSync(directory, { recursive: true });
  const server = new S3rver({ address: '127.0.0.1', port: 0, silent: true, directory, configureBuckets: [{ name: bucket, configs: [] }] });
  atomicPuts((server as unknown as { store: FilesystemStore }).store);
  const { port } = (await server.run()) as { port: number };
  return {
    endpoint: `http://127.0.0.1:${port}`,
    // s3rver's fixed development credentials.
    accessKey: 'S3RVER',
    secretKey: 'S3RVER',
    onNotification: (listener) => {
      // s3rver is an EventEmitter; its typings leave that out.
      (server as unknown as NodeJS.EventEmitter).on('event', (event: Required<S3Notification>) => {
        listener({ Records: event.Records.map((r) => ({ ...r, s3: { ...r.s3, object: { ...r.s3.object, key: encodeKey(r.s3.object.key) } } })) });
      });
    },
    close: () => server.close(),
  };
}
