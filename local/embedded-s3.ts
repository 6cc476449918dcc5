import { mkdirSync } from 'node:fs';
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

/** An S3-compatible server on loopback, its data in `directory`, for runs without AWS. */
export async function startEmbeddedS3(directory: string, bucket: string): Promise<EmbeddedS3> {
  mkdirSync(directory, { recursive: true });
  const server = new S3rver({ address: '127.0.0.1', port: 0, silent: true, directory, configureBuckets: [{ name: bucket, configs: [] }] });
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
