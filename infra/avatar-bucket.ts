import { Duration, RemovalPolicy } from 'aws-cdk-lib';
import { BlockPublicAccess, Bucket, BucketEncryption, type IBucket } from 'aws-cdk-lib/aws-s3';
import { Construct } from 'constructs';
import { Prefixes, SUPERSEDED_TAG } from '../lambdas/shared/keys.ts';

export interface AvatarBucketProps {
  /** Use this existing bucket instead of creating one. */
  existingBucketName?: string;
  /** Days before intermediate run files (base, grids, tiles) expire. */
  runExpiryDays: number;
  /** Opt-in: days a run is kept after a newer run of its persona replaced it. */
  supersededRunExpiryDays?: number;
}

/**
 * The one bucket (layout in lambdas/shared/keys.ts): persona uploads, intermediate run files
 * that expire, final avatars that stay. Encrypted, private, TLS only.
 */
export class AvatarBucket extends Construct {
  readonly bucket: IBucket;

  constructor(scope: Construct, id: string, props: AvatarBucketProps) {
    super(scope, id);
    this.bucket = props.existingBucketName
      ? Bucket.fromBucketName(this, 'Imported', props.existingBucketName)
      : new Bucket(this, 'Bucket', {
          encryption: BucketEncryption.S3_MANAGED,
          blockPublicAccess: BlockPublicAccess.BLOCK_ALL,
          enforceSSL: true,
          removalPolicy: RemovalPolicy.RETAIN,
          lifecycleRules: [
            { id: 'expire-intermediate-run-files', prefix: Prefixes.runs, expiration: Duration.days(props.runExpiryDays) },
            { id: 'abort-incomplete-uploads', abortIncompleteMultipartUploadAfter: Duration.days(1) },
            ...(props.supersededRunExpiryDays
              ? [
                  {
                    id: 'expire-superseded-runs',
                    prefix: Prefixes.avatars,
                    tagFilters: { [SUPERSEDED_TAG.key]: SUPERSEDED_TAG.value },
                    expiration: Duration.days(props.supersededRunExpiryDays),
                  },
                ]
              : []),
          ],
        });
  }
}
