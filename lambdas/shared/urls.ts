import { GetObjectCommand } from '@aws-sdk/client-s3';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import type { StageDeps } from './stage.ts';

/**
 * Where a caller fetches an object: under PUBLIC_BASE_URL (a CDN in front of the bucket),
 * else at the S3-compatible endpoint itself, else a presigned GET on AWS.
 */
export async function objectUrl(deps: StageDeps<'store'>, key: string): Promise<string> {
  const { publicBaseUrl, s3Endpoint, urlExpirySeconds } = deps.settings;
  const path = key.split('/').map(encodeURIComponent).join('/');
  if (publicBaseUrl) return `${publicBaseUrl}/${path}`;
  if (s3Endpoint) return `${s3Endpoint}/${deps.store.bucket}/${path}`;
  return getSignedUrl(deps.store.s3, new GetObjectCommand({ Bucket: deps.store.bucket, Key: key }), { expiresIn: urlExpirySeconds });
}
