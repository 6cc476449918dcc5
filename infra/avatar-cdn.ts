import { Aws, Duration } from 'aws-cdk-lib';
import {
  AllowedMethods,
  CachePolicy,
  Distribution,
  HttpVersion,
  PriceClass,
  S3OriginAccessControl,
  ViewerProtocolPolicy,
  Signing,
} from 'aws-cdk-lib/aws-cloudfront';
import { S3BucketOrigin } from 'aws-cdk-lib/aws-cloudfront-origins';
import { PolicyStatement, ServicePrincipal } from 'aws-cdk-lib/aws-iam';
import type { IBucket } from 'aws-cdk-lib/aws-s3';
import { NagSuppressions } from 'cdk-nag';
import { Construct } from 'constructs';
import { Prefixes } from '../lambdas/shared/keys.ts';

/**
 * URLs that last: CloudFront in front of the bucket's `avatars/` prefix, reading it through Origin
 * Access Control. The bucket stays private; its policy lets only this distribution read
 * `avatars/*`, over HTTPS. Run folders never change, so they are cached for a year; manifests
 * (the current one is replaced by each run) for a minute.
 */
export class AvatarCdn extends Construct {
  readonly distribution: Distribution;
  /** `https://{domain}`: what the stages put before an object key. */
  readonly baseUrl: string;

  constructor(scope: Construct, id: string, props: { bucket: IBucket }) {
    super(scope, id);
    const { bucket } = props;
    const oac = new S3OriginAccessControl(this, 'OriginAccess', { signing: Signing.SIGV4_ALWAYS });
    // Not withOriginAccessControl(): its policy would open the whole bucket, uploads included.
    const origin = S3BucketOrigin.withBucketDefaults(bucket, { originAccessControlId: oac.originAccessControlId });
    const behavior = { origin, viewerProtocolPolicy: ViewerProtocolPolicy.HTTPS_ONLY, allowedMethods: AllowedMethods.ALLOW_GET_HEAD, compress: true };
    const immutable = new CachePolicy(this, 'RunFolders', { comment: 'avatars/{id}/runs/{runId}/: written once', defaultTtl: Duration.days(365), maxTtl: Duration.days(365), minTtl: Duration.days(1) });
    const manifests = new CachePolicy(this, 'Manifests', { comment: 'manifests: the current one changes with each run', defaultTtl: Duration.minutes(1), maxTtl: Duration.minutes(5), minTtl: Duration.seconds(0) });
    this.distribution = new Distribution(this, 'Distribution', {
      comment: 'persona-avatars: published avatars',
      defaultBehavior: { ...behavior, cachePolicy: immutable },
      additionalBehaviors: { [`${Prefixes.avatars}*/manifest.json`]: { ...behavior, cachePolicy: manifests } },
      httpVersion: HttpVersion.HTTP2_AND_3,
      priceClass: PriceClass.PRICE_CLASS_100,
    });
    bucket.addToResourcePolicy(
      new PolicyStatement({
        sid: 'AvatarCdnReadsAvatars',
        actions: ['s3:GetObject'],
        principals: [new ServicePrincipal('cloudfront.amazonaws.com')],
        resources: [bucket.arnForObjects(`${Prefixes.avatars}*`)],
        conditions: { StringEquals: { 'AWS:SourceArn': `arn:${Aws.PARTITION}:cloudfront::${Aws.ACCOUNT_ID}:distribution/${this.distribution.distributionId}` } },
      }),
    );
    this.baseUrl = `https://${this.distribution.distributionDomainName}`;
    NagSuppressions.addResourceSuppressions(this.distribution, [
      { id: 'AwsSolutions-CFR1', reason: 'Avatars are public profile pictures meant for every country; there is nothing to geo-restrict.' },
      { id: 'AwsSolutions-CFR2', reason: 'The distribution serves static images read-only (GET, HEAD) from a private bucket; add a WAF web ACL where an account requires one.' },
      { id: 'AwsSolutions-CFR3', reason: 'Access logs would record every avatar view; enable standard logging where an account needs an audit trail of reads.' },
      { id: 'AwsSolutions-CFR4', reason: 'The default cloudfront.net certificate is used, whose TLS policy CloudFront sets; a custom domain (PUBLIC_BASE_URL) brings its own policy.' },
    ]);
  }
}
