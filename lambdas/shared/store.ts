import { createReadStream, createWriteStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createInterface } from 'node:readline';
import {
  DeleteObjectCommand,
  GetObjectCommand,
  NoSuchKey,
  PutObjectCommand,
  PutObjectTaggingCommand,
  type S3Client,
} from '@aws-sdk/client-s3';

/**
 * Whether a read failed because the object is not there. The stages may not list the bucket, and
 * without s3:ListBucket S3 answers a missing key with 403 AccessDenied rather than 404 NoSuchKey.
 * A read the role may not make is not a missing object: S3 says so in the message of a
 * same-account denial ("User: … is not authorized to perform: s3:GetObject …", S3 User Guide,
 * "Troubleshoot access denied (403 Forbidden) errors"), and that goes on as the error it is.
 */
export function isMissingObject(error: unknown): boolean {
  if (error instanceof NoSuchKey) return true;
  const e = error as { name?: string; message?: string; $metadata?: { httpStatusCode?: number } };
  return e?.name === 'AccessDenied' && e.$metadata?.httpStatusCode === 403 && !/is not authorized to perform/.test(e.message ?? '');
}

/** Tries of a conditional write that S3 answers 409 ConditionalRequestConflict. */
const CONFLICT_TRIES = 5;

/** The one bucket every stage reads and writes, addressed by key. */
export class ObjectStore {
  readonly s3: S3Client;
  readonly bucket: string;

  constructor(s3: S3Client, bucket: string) {
    this.s3 = s3;
    this.bucket = bucket;
  }

  async put(key: string, body: Buffer | string, contentType: string): Promise<void> {
    await this.s3.send(new PutObjectCommand({ Bucket: this.bucket, Key: key, Body: body, ContentType: contentType }));
  }

  /**
   * Writes `key` only if no object is there (S3's conditional write, `If-None-Match: *`); false
   * when one is. Of two writers at once, exactly one gets true.
   */
  async putNew(key: string, body: Buffer | string, contentType: string): Promise<boolean> {
    for (let attempt = 1; ; attempt++) {
      try {
        await this.s3.send(new PutObjectCommand({ Bucket: this.bucket, Key: key, Body: body, ContentType: contentType, IfNoneMatch: '*' }));
        return true;
      } catch (error) {
        const status = (error as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
        if (status === 412) return false;
        // 409 ConditionalRequestConflict: another conditional write to the key was in flight; S3
        // asks for a retry (S3 User Guide, "How to prevent object overwrites with conditional writes").
        if (status !== 409 || attempt >= CONFLICT_TRIES) throw error;
        await new Promise((resolve) => setTimeout(resolve, 50 * 2 ** attempt * Math.random()));
      }
    }
  }

  /** A file on disk, streamed up: never whole in memory. */
  async putFile(key: string, path: string, contentType: string): Promise<void> {
    const { size } = await stat(path);
    await this.s3.send(new PutObjectCommand({ Bucket: this.bucket, Key: key, Body: createReadStream(path), ContentLength: size, ContentType: contentType }));
  }

  /** The object, streamed down to a file on disk. */
  async getFile(key: string, path: string): Promise<void> {
    const answer = await this.read(key);
    await pipeline(answer.Body as Readable, createWriteStream(path));
  }

  async putJson(key: string, value: unknown): Promise<void> {
    await this.put(key, `${JSON.stringify(value, null, 2)}\n`, 'application/json');
  }

  async getBytes(key: string): Promise<Buffer> {
    const answer = await this.read(key);
    return Buffer.from(await answer.Body!.transformToByteArray());
  }

  /** The object's lines as they arrive, without holding the whole object. */
  async *lines(key: string): AsyncGenerator<string> {
    const answer = await this.read(key);
    yield* createInterface({ input: answer.Body as Readable, crlfDelay: Infinity });
  }

  /** A GetObject whose failure names the object: S3's own message ("The specified key does not exist.") does not. */
  private async read(key: string) {
    try {
      return await this.s3.send(new GetObjectCommand({ Bucket: this.bucket, Key: key }));
    } catch (error) {
      const e = error as Error;
      if (typeof e?.message === 'string' && !e.message.includes(key)) e.message = `${e.message.replace(/\.?$/, '')}: s3://${this.bucket}/${key}`;
      throw error;
    }
  }

  async getText(key: string): Promise<string> {
    return (await this.getBytes(key)).toString('utf8');
  }

  /** The text at `key`, or undefined when there is none. */
  async getTextIfExists(key: string): Promise<string | undefined> {
    try {
      return await this.getText(key);
    } catch (error) {
      if (isMissingObject(error)) return undefined;
      throw error;
    }
  }

  /** The JSON at `key`, or undefined when there is none. */
  async getJsonIfExists<T>(key: string): Promise<T | undefined> {
    const text = await this.getTextIfExists(key);
    return text === undefined ? undefined : (JSON.parse(text) as T);
  }

  /** Replaces the object's tags (lifecycle rules select objects by tag). */
  async tag(key: string, tags: Record<string, string>): Promise<void> {
    const TagSet = Object.entries(tags).map(([Key, Value]) => ({ Key, Value }));
    await this.s3.send(new PutObjectTaggingCommand({ Bucket: this.bucket, Key: key, Tagging: { TagSet } }));
  }

  async delete(key: string): Promise<void> {
    await this.s3.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: key }));
  }
}
