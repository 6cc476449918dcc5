/**
 * Certificates for signing C2PA manifests where no real one is at hand: a small CA and a leaf it
 * issues, ES256, to the C2PA certificate profile (C2PA specification, "Certificate Profile"): a
 * subject with an Organization (readers built on c2pa-rs refuse a signer without O=:
 * contentauth/c2pa-rs#2262), digitalSignature key usage, emailProtection extended key usage (not
 * serverAuth), not a CA. Readers trust them only when told to: the CA is the trust anchor to pass them.
 */
import { webcrypto } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as x509 from '@peculiar/x509';

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

const ES256 = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' };
const EMAIL_PROTECTION = '1.3.6.1.5.5.7.3.4';
/** The Organization of every certificate made here. */
export const ORGANIZATION = 'persona-avatars';
const DAY_MS = 24 * 3600 * 1000;
/** Long: a manifest signed without a trusted timestamp validates only while its certificate does. */
const VALID_DAYS = 25 * 365;

export interface SigningCertificate {
  /** The CA that issued the signing certificate: a reader's trust anchor. */
  caPem: string;
  /** The signing certificate (the chain a manifest carries). */
  certificatePem: string;
  /** Its key, PKCS#8. */
  privateKeyPem: string;
}

const serial = () => Buffer.from(webcrypto.getRandomValues(new Uint8Array(8))).toString('hex').replace(/^[89a-f]/, '1');

/**
 * A CA named `<name> CA` and a signing certificate `name` it issued, valid from a day ago for 25
 * years. The system's time, not an injected clock: C2PA validators hold the signature to it.
 */
export async function issueSigningCertificate(
  name: string,
  {
    notBefore = new Date(Date.now() - DAY_MS),
    notAfter = new Date(Date.now() + VALID_DAYS * DAY_MS),
    organization = ORGANIZATION,
  }: { notBefore?: Date; notAfter?: Date; /** null: none, as a certificate off the profile has it. */ organization?: string | null } = {},
): Promise<SigningCertificate> {
  const caKeys = await webcrypto.subtle.generateKey(ES256, true, ['sign', 'verify']);
  const ca = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serial(),
    name: `CN=${name} CA${organization ? `, O=${organization}` : ''}`,
    notBefore,
    notAfter,
    keys: caKeys,
    signingAlgorithm: ES256,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(caKeys.publicKey),
    ],
  });
  const keys = await webcrypto.subtle.generateKey(ES256, true, ['sign', 'verify']);
  const leaf = await x509.X509CertificateGenerator.create({
    serialNumber: serial(),
    subject: `CN=${name}${organization ? `, O=${organization}` : ''}`,
    issuer: ca.subject,
    notBefore,
    notAfter,
    signingKey: caKeys.privateKey,
    publicKey: keys.publicKey,
    signingAlgorithm: ES256,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([EMAIL_PROTECTION]),
      await x509.AuthorityKeyIdentifierExtension.create(caKeys.publicKey),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  const pkcs8 = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey)).toString('base64');
  return {
    // Each ends its line, so PEMs concatenate into one bundle of anchors.
    caPem: `${ca.toString('pem')}\n`,
    certificatePem: `${leaf.toString('pem')}\n`,
    privateKeyPem: `-----BEGIN PRIVATE KEY-----\n${pkcs8.match(/.{1,64}/g)!.join('\n')}\n-----END PRIVATE KEY-----\n`,
  };
}

/** No reader trusts it unless told to: `avatars verify` says so of what it signed. */
export const DEV_SIGNER_NAME = 'persona-avatars development';

export interface DevSigningFiles {
  /** The development CA: pass it to a C2PA reader as trust anchor to see "Trusted". */
  ca: string;
  certificate: string;
  privateKey: string;
}

/**
 * The development signing certificate under `dir`, made on first use and made again once expired:
 * local runs sign as AWS runs do, with a certificate no reader trusts unless told to.
 */
export async function devSigningFiles(dir: string): Promise<DevSigningFiles> {
  const files = { ca: join(dir, 'dev-ca.pem'), certificate: join(dir, 'dev-signer.pem'), privateKey: join(dir, 'dev-signer.key') };
  const made = existsSync(files.certificate) && existsSync(files.privateKey) && existsSync(files.ca) ? new x509.X509Certificate(readFileSync(files.certificate, 'utf8')) : undefined;
  // One made before the certificate profile was met (no O=), or under another name, is made again too.
  const current = made && made.notAfter.getTime() > Date.now() + DAY_MS && /\bO=/.test(made.subject) && made.subject.includes(`CN=${DEV_SIGNER_NAME},`);
  if (!current) {
    const issued = await issueSigningCertificate(DEV_SIGNER_NAME);
    mkdirSync(dir, { recursive: true });
    writeFileSync(files.ca, issued.caPem);
    writeFileSync(files.certificate, issued.certificatePem);
    writeFileSync(files.privateKey, issued.privateKeyPem, { mode: 0o600 });
  }
  return files;
}
