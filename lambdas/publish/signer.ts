/**
 * Who signs the avatars' C2PA manifests: a certificate chain and an ES256 key, from a Secrets
 * Manager secret on AWS (`C2PA_SIGNING_SECRET_ARN`, set by the stack) or from PEM files
 * (`C2PA_CERTIFICATE`, `C2PA_PRIVATE_KEY`; the local runner makes a development pair). Signing is
 * a callback (`C2paSigner.sign`), so a key that never leaves KMS can stand in for the PEM key.
 */
import { createPrivateKey, sign, X509Certificate, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { GetSecretValueCommand, SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import { withClientPlugins } from '../shared/aws-clients.ts';
import { ConfigurationError, UpstreamError } from '../shared/errors.ts';
import type { ClientFactory } from '../shared/stage.ts';
import type { C2paSigner } from './c2pa.ts';

export type { C2paSigner };

const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;

/** The certificate's common name, else its whole subject. */
function commonName(certificate: X509Certificate): string {
  return /^CN=(.+)$/m.exec(certificate.subject)?.[1] ?? certificate.subject.replace(/\n/g, ', ');
}

/**
 * A signer from a PEM chain (the signing certificate first, then its issuers) and its PEM key.
 * `source` names where they came from, for a person to fix.
 */
export function pemSigner(certificatePem: string, privateKeyPem: string, source: string): C2paSigner {
  const certificates = (certificatePem.match(PEM_CERTIFICATE) ?? []).map((pem) => {
    try {
      return new X509Certificate(pem);
    } catch (error) {
      throw new ConfigurationError(`${source}: a certificate does not parse (${(error as Error).message})`);
    }
  });
  if (certificates.length === 0) throw new ConfigurationError(`${source}: no PEM certificate (-----BEGIN CERTIFICATE-----) in the certificate chain`);
  let key: KeyObject;
  try {
    key = createPrivateKey(privateKeyPem);
  } catch (error) {
    throw new ConfigurationError(`${source}: the private key does not parse as PEM (${(error as Error).message})`);
  }
  if (key.asymmetricKeyType !== 'ec' || key.asymmetricKeyDetails?.namedCurve !== 'prime256v1') {
    throw new ConfigurationError(`${source}: C2PA signing here takes an ECDSA P-256 key (ES256), got ${key.asymmetricKeyType} ${key.asymmetricKeyDetails?.namedCurve ?? ''}`.trim());
  }
  const leaf = certificates[0]!;
  // Checked against the system's time, as C2PA validators check the signature.
  const [from, to] = [new Date(leaf.validFrom), new Date(leaf.validTo)];
  if (Date.now() < from.getTime() || Date.now() > to.getTime()) {
    throw new ConfigurationError(`${source}: the signing certificate "${commonName(leaf)}" is valid from ${from.toISOString()} to ${to.toISOString()}, not now: renew it`);
  }
  if (!leaf.checkPrivateKey(key)) throw new ConfigurationError(`${source}: the private key is not the key of the first certificate (${leaf.subject.replace(/\n/g, ', ')})`);
  return {
    name: commonName(leaf),
    chain: certificates.map((c) => new Uint8Array(c.raw)),
    sign: async (bytes) => sign('sha256', bytes, { key, dsaEncoding: 'ieee-p1363' }),
  };
}

/** The secret's JSON: `{ "certificate": "<PEM chain>", "privateKey": "<PEM key>" }`. */
export function signerFromSecret(secret: string, secretId: string): C2paSigner {
  let parsed: { certificate?: unknown; privateKey?: unknown };
  try {
    parsed = JSON.parse(secret) as typeof parsed;
  } catch {
    throw new ConfigurationError(`C2PA signing secret ${secretId}: not JSON; store {"certificate": "<PEM chain>", "privateKey": "<PEM key>"} (README: Marking)`);
  }
  if (typeof parsed.certificate !== 'string' || typeof parsed.privateKey !== 'string') {
    throw new ConfigurationError(`C2PA signing secret ${secretId}: needs the strings "certificate" (PEM chain) and "privateKey" (PEM key) (README: Marking)`);
  }
  return pemSigner(parsed.certificate, parsed.privateKey, `C2PA signing secret ${secretId}`);
}

type Env = Record<string, string | undefined>;

/** What publish signs with, and, when nothing, why: for the manifest's warning. */
export interface Signing {
  signer: C2paSigner | undefined;
  unsignedBecause?: string;
}

/**
 * The signer the environment names. A secret that does not exist yet means unsigned avatars (with
 * a warning), so a stack deploys and runs before its certificate is bought; one that is there but
 * wrong is a configuration error.
 */
export async function signingFromEnv(env: Env, secrets?: SecretsManagerClient): Promise<Signing> {
  const secretId = env.C2PA_SIGNING_SECRET_ARN;
  if (secretId) {
    let secret: string;
    try {
      secret = (await (secrets ?? withClientPlugins(new SecretsManagerClient({}))).send(new GetSecretValueCommand({ SecretId: secretId }))).SecretString ?? '';
    } catch (error) {
      if ((error as Error).name === 'ResourceNotFoundException') {
        return { signer: undefined, unsignedBecause: `the C2PA signing secret ${secretId} does not exist` };
      }
      // IAM is evaluated before the secret is looked up: a role granted NAME-?????? is denied a
      // secret that does not exist yet, so a denial here is most often that (or a changed grant).
      if ((error as Error).name === 'AccessDeniedException') {
        return { signer: undefined, unsignedBecause: `the C2PA signing secret ${secretId} could not be read (AccessDeniedException): it does not exist yet, or publish's role may not read it` };
      }
      throw new UpstreamError(`reading the C2PA signing secret (${secretId}) failed: ${(error as Error).name}: ${(error as Error).message}; retried`, { cause: error });
    }
    return { signer: signerFromSecret(secret, secretId) };
  }
  const [certificate, privateKey] = [env.C2PA_CERTIFICATE, env.C2PA_PRIVATE_KEY];
  if (certificate || privateKey) {
    if (!certificate || !privateKey) throw new ConfigurationError('C2PA_CERTIFICATE and C2PA_PRIVATE_KEY go together: set both (PEM files) or neither');
    const read = (file: string, what: string) => {
      try {
        return readFileSync(file, 'utf8');
      } catch (error) {
        throw new ConfigurationError(`${what}: cannot read ${file} (${(error as NodeJS.ErrnoException).code ?? (error as Error).message})`);
      }
    };
    return { signer: pemSigner(read(certificate, 'C2PA_CERTIFICATE'), read(privateKey, 'C2PA_PRIVATE_KEY'), `${certificate} and ${privateKey}`) };
  }
  return { signer: undefined, unsignedBecause: 'no C2PA signing certificate is configured' };
}

/** For publish: its C2PA signing, read once per container. */
export const signingClient: ClientFactory = async (env) => ({ signing: await signingFromEnv(env) });
