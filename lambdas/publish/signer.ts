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

/** Extended key usages the C2PA certificate profile accepts of a signer (emailProtection, documentSigning…). */
const C2PA_SIGNER_EKUS = new Set(['1.3.6.1.5.5.7.3.4', '1.3.6.1.4.1.311.10.3.12', '1.3.6.1.5.5.7.3.36', '1.3.6.1.5.5.7.3.8', '1.3.6.1.5.5.7.3.9']);

/**
 * What keeps a signing certificate from the C2PA certificate profile, as readers check it: a
 * subject with an Organization (c2pa-rs refuses one without: contentauth/c2pa-rs#2262), not a CA,
 * an extended key usage for signing documents and not `anyExtendedKeyUsage`.
 */
export function profileProblem(certificate: X509Certificate): string | undefined {
  if (!/^O=/m.test(certificate.subject)) return `its subject (${certificate.subject.replace(/\n/g, ', ')}) has no Organization (O=)`;
  if (certificate.ca) return 'it is a CA certificate';
  const ekus = certificate.keyUsage ?? [];
  if (ekus.length === 0 || ekus.includes('2.5.29.37.0') || !ekus.some((oid) => C2PA_SIGNER_EKUS.has(oid))) {
    return `its extended key usage (${ekus.join(', ') || 'none'}) names none of emailProtection, documentSigning, timeStamping or OCSPSigning`;
  }
  return undefined;
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
  const profile = profileProblem(leaf);
  if (profile) throw new ConfigurationError(`${source}: the signing certificate "${commonName(leaf)}" does not meet the C2PA certificate profile: ${profile}; C2PA readers would call every avatar invalid (README: Marking)`);
  if (!leaf.checkPrivateKey(key)) throw new ConfigurationError(`${source}: the private key is not the key of the first certificate (${leaf.subject.replace(/\n/g, ', ')})`);
  return {
    name: commonName(leaf),
    notAfter: to,
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

/** Publish's signing as it stands now: the certificate configured, read again when it may have changed. */
export interface SigningSource {
  current(): Promise<Signing>;
}

/** A certificate is read again this often, so a renewed one is used without a cold start. */
export const SIGNING_REREAD_MS = 3_600_000;

/**
 * Signing read from the environment, kept for an hour and never past its certificate's end: a warm
 * container does not sign with an expired certificate (no trusted timestamp makes it valid later)
 * and picks up a renewed one. `now` is the system's time, the one C2PA validators hold it to.
 */
export function signingSource(env: Env, now: () => number = Date.now): SigningSource {
  let held: { signing: Promise<Signing>; until: number } | undefined;
  return {
    current() {
      const t = now();
      if (!held || t >= held.until) {
        const signing = signingFromEnv(env);
        held = { signing, until: t + SIGNING_REREAD_MS };
        // A failed read is not kept; a certificate is not kept past its end.
        signing.then(
          (s) => {
            if (held?.signing === signing && s.signer?.notAfter) held.until = Math.min(held.until, s.signer.notAfter.getTime());
          },
          () => {
            if (held?.signing === signing) held = undefined;
          },
        );
      }
      return held.signing;
    },
  };
}

/** For publish: its C2PA signing, read on first use and again when it may have changed. */
export const signingClient: ClientFactory = (env) => ({ signing: signingSource(env) });
