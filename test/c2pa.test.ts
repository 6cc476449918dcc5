import { createPrivateKey, sign, webcrypto, X509Certificate } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { manifestActions, readC2pa, signC2pa, TRAINED_ALGORITHMIC_MEDIA, type C2paSigner } from '../lambdas/publish/c2pa.ts';
import { pemSigner, profileProblem, signerFromSecret, signingFromEnv, signingSource } from '../lambdas/publish/signer.ts';
import { devSigningFiles, issueSigningCertificate, type SigningCertificate } from '../local/certificates.ts';
import { listenOnLoopback, readBody, sendJson, type LoopbackServer } from '../local/loopback-server.ts';
import { readWithCaiWebSdk } from './c2pa-web.ts';
import { holdsC2paWhereExpected, tempDir, withOnePixelByteChanged } from './support.ts';

const formats = ['png', 'webp', 'jpeg'] as const;
const dir = tempDir('c2pa-pem');
const GENERATOR = { name: 'persona-avatars', version: '0.1.0' };
const created = { action: 'c2pa.created', digitalSourceType: TRAINED_ALGORITHMIC_MEDIA, softwareAgent: 'gpt-image-2' };

let publisher: SigningCertificate;
let generator: SigningCertificate;
let signer: C2paSigner;
beforeAll(async () => {
  [publisher, generator] = await Promise.all([issueSigningCertificate('Example Corp avatars'), issueSigningCertificate('Example image model')]);
  signer = pemSigner(publisher.certificatePem, publisher.privateKeyPem, 'test');
});

const picture = (format: (typeof formats)[number], width = 96, height = 120) =>
  sharp({ create: { width, height, channels: 3, background: { r: 180, g: 120, b: 90 } } })
    .composite([{ input: { create: { width: 20, height: 30, channels: 3, background: '#204060' } }, left: 10, top: 10 }])
    .toFormat(format)
    .toBuffer();

describe('a signed C2PA manifest in an image', () => {
  for (const format of formats) {
    it(`is embedded where ${format} keeps it, pixels untouched, Trusted under its CA and only Valid (untrusted) without it`, async () => {
      const image = await picture(format);
      const signed = await signC2pa({ bytes: image, format }, { title: `avatar.${format}`, actions: [created] }, signer, GENERATOR);
      expect(holdsC2paWhereExpected(signed, format)).toBe(true);
      const [before, after] = await Promise.all([image, signed].map((f) => sharp(f).raw().toBuffer()));
      expect(after!.equals(before!)).toBe(true);
      expect(await readC2pa({ bytes: signed, format }, publisher.caPem)).toMatchObject({ state: 'Trusted', failures: [] });
      expect(await readC2pa({ bytes: signed, format })).toMatchObject({ state: 'Valid', failures: ['signingCredential.untrusted'] });
    });

    it(`turns invalid when one pixel byte of a signed ${format} changes`, async () => {
      const signed = await signC2pa({ bytes: await picture(format), format }, { title: 'a', actions: [created] }, signer, GENERATOR);
      const report = await readC2pa({ bytes: withOnePixelByteChanged(signed, format), format }, publisher.caPem);
      expect(report?.state).toBe('Invalid');
      expect(report?.failures.length).toBeGreaterThan(0);
    });
  }

  it('says what made it, with what, and who signed it, as written (golden)', async () => {
    const signed = await signC2pa({ bytes: await picture('png'), format: 'png' }, { title: 'avatar-1.png', actions: [created, { action: 'c2pa.cropped' }] }, signer, GENERATOR);
    const report = await readC2pa({ bytes: signed, format: 'png' }, publisher.caPem);
    expect(report!.manifest).toMatchObject({
      title: 'avatar-1.png',
      claim_generator_info: [GENERATOR],
      signature_info: { alg: 'Es256', common_name: 'Example Corp avatars' },
    });
    expect(manifestActions(report!.manifest)).toEqual([
      { action: 'c2pa.created', digitalSourceType: TRAINED_ALGORITHMIC_MEDIA, softwareAgent: { name: 'gpt-image-2' } },
      { action: 'c2pa.cropped' },
    ]);
  });

  it('carries the image it was cut from as its parentOf ingredient, with that image\u2019s own signed manifest', async () => {
    const grid = await signC2pa({ bytes: await picture('png', 256, 256), format: 'png' }, { title: 'grid.png', actions: [created] }, pemSigner(generator.certificatePem, generator.privateKeyPem, 'generator'), GENERATOR);
    const tile = await sharp(grid).extract({ left: 0, top: 0, width: 128, height: 128 }).png().toBuffer();
    const avatar = await signC2pa(
      { bytes: tile, format: 'png' },
      { title: 'avatar-1.png', actions: [{ action: 'c2pa.opened', ingredients: ['grid'], digitalSourceType: TRAINED_ALGORITHMIC_MEDIA }, { action: 'c2pa.cropped' }], parent: { bytes: grid, format: 'png', label: 'grid', title: 'grid.png' } },
      signer,
      GENERATOR,
    );
    const report = await readC2pa({ bytes: avatar, format: 'png' }, publisher.caPem + generator.caPem);
    expect(report).toMatchObject({ state: 'Trusted', manifest: { ingredients: [{ title: 'grid.png', relationship: 'parentOf' }] } });
    expect(report!.parent).toMatchObject({ signature_info: { common_name: 'Example image model' } });
    expect(manifestActions(report!.parent!)).toEqual([expect.objectContaining({ action: 'c2pa.created', digitalSourceType: TRAINED_ALGORITHMIC_MEDIA })]);
  });

  it('reads as none in an image that has no manifest', async () => {
    expect(await readC2pa({ bytes: await picture('jpeg'), format: 'jpeg' })).toBeUndefined();
  });

  it('is signed through a callback, so a key that never leaves its store (KMS, an HSM) can sign', async () => {
    const issued = await issueSigningCertificate('Key in a vault');
    const der = Buffer.from(issued.privateKeyPem.replace(/-----[^-]+-----|\s/g, ''), 'base64');
    // Not extractable: only the store signs with it, as KMS does.
    const key = await webcrypto.subtle.importKey('pkcs8', der, { name: 'ECDSA', namedCurve: 'P-256' }, false, ['sign']);
    const vault: C2paSigner = {
      name: 'Key in a vault',
      chain: pemSigner(issued.certificatePem, issued.privateKeyPem, 'vault').chain,
      sign: async (bytes) => new Uint8Array(await webcrypto.subtle.sign({ name: 'ECDSA', hash: 'SHA-256' }, key, bytes)),
    };
    const signed = await signC2pa({ bytes: await picture('png'), format: 'png' }, { title: 'a', actions: [created] }, vault, GENERATOR);
    expect((await readC2pa({ bytes: signed, format: 'png' }, issued.caPem))?.state).toBe('Trusted');
  });
});

describe('the C2PA signing certificate', () => {
  it('is refused, naming where it came from, when the key is not the certificate\u2019s or not P-256', async () => {
    const other = await issueSigningCertificate('Someone else');
    expect(() => pemSigner(publisher.certificatePem, other.privateKeyPem, 'the secret x')).toThrow(/the secret x: the private key is not the key of the first certificate/);
    const { privateKey } = await webcrypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-384' }, true, ['sign']);
    const p384 = `-----BEGIN PRIVATE KEY-----\n${Buffer.from(await webcrypto.subtle.exportKey('pkcs8', privateKey)).toString('base64')}\n-----END PRIVATE KEY-----\n`;
    expect(() => pemSigner(publisher.certificatePem, p384, 'the secret x')).toThrow(/the secret x: C2PA signing here takes an ECDSA P-256 key \(ES256\), got ec secp384r1/);
    expect(() => pemSigner('not a certificate', publisher.privateKeyPem, 'f')).toThrow(/f: no PEM certificate/);
  });

  it('is refused when it has expired or is not valid yet, naming its dates', async () => {
    const day = 24 * 3600 * 1000;
    const expired = await issueSigningCertificate('Old certificate', { notBefore: new Date(Date.now() - 400 * day), notAfter: new Date(Date.now() - 35 * day) });
    expect(() => pemSigner(expired.certificatePem, expired.privateKeyPem, 'the secret x')).toThrow(/^the secret x: the signing certificate "Old certificate" is valid from \S+ to \S+, not now: renew it$/);
    const early = await issueSigningCertificate('Future certificate', { notBefore: new Date(Date.now() + 30 * day) });
    expect(() => pemSigner(early.certificatePem, early.privateKeyPem, 'f')).toThrow(/"Future certificate" is valid from/);
    // A callback signer (a KMS key) whose chain expired: the library refuses what it signed.
    const key = createPrivateKey(expired.privateKeyPem);
    const kms: C2paSigner = { name: 'Old certificate', chain: [new Uint8Array(new X509Certificate(expired.certificatePem).raw)], sign: async (bytes) => sign('sha256', bytes, { key, dsaEncoding: 'ieee-p1363' }) };
    const error = (await signC2pa({ bytes: await picture('png'), format: 'png' }, { title: 'a', actions: [created] }, kms, GENERATOR).catch((e: unknown) => e)) as Error;
    expect(error.name).toBe('ConfigurationError');
    expect(error.message).toBe('C2PA signing as "Old certificate" refused: signingCredential.expired; renew or replace the signing certificate (README: Marking)');
  });

  it('refuses a signing certificate off the C2PA certificate profile, naming what is missing', async () => {
    const noOrganization = await issueSigningCertificate('Nameless signer', { organization: null });
    expect(() => pemSigner(noOrganization.certificatePem, noOrganization.privateKeyPem, 'chain.pem and key.pem')).toThrow(
      /^chain\.pem and key\.pem: the signing certificate "Nameless signer" does not meet the C2PA certificate profile: its subject \(CN=Nameless signer\) has no Organization \(O=\)/,
    );
  });

  it('off the profile (no O=) is read by the CAI web SDK as a claim signature mismatch, which the profile check prevents', async () => {
    const noOrganization = await issueSigningCertificate('Nameless signer', { organization: null });
    const key = createPrivateKey(noOrganization.privateKeyPem);
    const offProfile: C2paSigner = {
      name: 'Nameless signer',
      chain: [new Uint8Array(new X509Certificate(noOrganization.certificatePem).raw)],
      sign: async (bytes) => sign('sha256', bytes, { key, dsaEncoding: 'ieee-p1363' }),
    };
    const image = await picture('png');
    const [withoutOrganization, withOrganization] = await Promise.all([offProfile, signer].map((s) => signC2pa({ bytes: image, format: 'png' }, { title: 'a', actions: [created] }, s, GENERATOR)));
    expect((await readWithCaiWebSdk(withoutOrganization!, 'image/png')).failures).toContain('claimSignature.mismatch');
    expect(await readWithCaiWebSdk(withOrganization!, 'image/png')).toEqual({ state: 'Valid', failures: ['signingCredential.untrusted'], signer: 'Example Corp avatars' });
  });

  it('makes development certificates that meet the C2PA certificate profile', async () => {
    const files = await devSigningFiles(join(dir, 'dev'));
    const leaf = new X509Certificate(readFileSync(files.certificate, 'utf8'));
    expect(leaf.subject).toMatch(/^O=persona-avatars$/m);
    expect(profileProblem(leaf)).toBeUndefined();
  });

  it('comes from a secret\u2019s JSON, whose missing field is named', () => {
    expect(signerFromSecret(JSON.stringify({ certificate: publisher.certificatePem, privateKey: publisher.privateKeyPem }), 'arn:s').name).toBe('Example Corp avatars');
    expect(() => signerFromSecret(JSON.stringify({ certificate: publisher.certificatePem }), 'arn:s')).toThrow(/C2PA signing secret arn:s: needs the strings "certificate" \(PEM chain\) and "privateKey"/);
    expect(() => signerFromSecret('-----BEGIN', 'arn:s')).toThrow(/C2PA signing secret arn:s: not JSON/);
  });

  describe('read from Secrets Manager', () => {
    const secrets = new Map<string, string>();
    let server: LoopbackServer;
    let client: SecretsManagerClient;
    beforeAll(async () => {
      // Secrets Manager's JSON protocol, as the SDK speaks it, to a role granted the secret's
      // `NAME-??????` only: IAM is evaluated before the secret is looked up, so a secret that does
      // not exist yet is AccessDeniedException, not ResourceNotFoundException.
      server = await listenOnLoopback(
        async (req, res) => {
          const { SecretId } = JSON.parse(await readBody(req)) as { SecretId: string };
          const secret = secrets.get(SecretId);
          if (req.headers['x-amz-target'] !== 'secretsmanager.GetSecretValue' || !secret) {
            const message = `User: arn:aws:sts::123456789012:assumed-role/publish-role/publish is not authorized to perform: secretsmanager:GetSecretValue on resource: ${SecretId} because no identity-based policy allows the secretsmanager:GetSecretValue action`;
            sendJson(res, 400, { __type: 'AccessDeniedException', Message: message }, { 'content-type': 'application/x-amz-json-1.1' });
            return;
          }
          sendJson(res, 200, { ARN: SecretId, Name: SecretId, SecretString: secret }, { 'content-type': 'application/x-amz-json-1.1' });
        },
        (res, error) => sendJson(res, 500, { __type: 'InternalServiceError', Message: error.message }),
      );
      client = new SecretsManagerClient({ endpoint: `http://127.0.0.1:${server.port}`, region: 'eu-west-3', credentials: { accessKeyId: 'test', secretAccessKey: 'test' } });
    });
    afterAll(async () => {
      client.destroy();
      await server.close();
    });

    it('signs with the secret the stack names, and publishes unsigned, saying why, while that secret does not exist', async () => {
      const arn = 'arn:aws:secretsmanager:eu-west-3:123456789012:secret:persona-avatars/c2pa-signing';
      expect(await signingFromEnv({ C2PA_SIGNING_SECRET_ARN: arn }, client)).toEqual({
        signer: undefined,
        unsignedBecause: `the C2PA signing secret ${arn} could not be read (AccessDeniedException): it does not exist yet, or publish's role may not read it`,
      });
      secrets.set(arn, JSON.stringify({ certificate: publisher.certificatePem, privateKey: publisher.privateKeyPem }));
      expect((await signingFromEnv({ C2PA_SIGNING_SECRET_ARN: arn }, client)).signer?.name).toBe('Example Corp avatars');
    });
  });

  it('signs with a renewed certificate within the hour, and never past the end of the one it holds', async () => {
    const [first, renewed] = await Promise.all([issueSigningCertificate('First signer', { notAfter: new Date(Date.now() + 10 * 60_000) }), issueSigningCertificate('Renewed signer')]);
    const files = { C2PA_CERTIFICATE: join(dir, 'rotating.pem'), C2PA_PRIVATE_KEY: join(dir, 'rotating.key') };
    writeFileSync(files.C2PA_CERTIFICATE, first.certificatePem);
    writeFileSync(files.C2PA_PRIVATE_KEY, first.privateKeyPem);
    let now = Date.now();
    const source = signingSource(files, () => now);
    expect((await source.current()).signer?.name).toBe('First signer');
    writeFileSync(files.C2PA_CERTIFICATE, renewed.certificatePem);
    writeFileSync(files.C2PA_PRIVATE_KEY, renewed.privateKeyPem);
    now += 60_000;
    expect((await source.current()).signer?.name).toBe('First signer');
    // The first certificate ends ten minutes in, before the hour: read again then.
    now += 10 * 60_000;
    expect((await source.current()).signer?.name).toBe('Renewed signer');
  });

  it('comes from PEM files elsewhere, both or neither', async () => {
    writeFileSync(join(dir, 'chain.pem'), publisher.certificatePem);
    writeFileSync(join(dir, 'key.pem'), publisher.privateKeyPem);
    expect((await signingFromEnv({ C2PA_CERTIFICATE: join(dir, 'chain.pem'), C2PA_PRIVATE_KEY: join(dir, 'key.pem') })).signer?.name).toBe('Example Corp avatars');
    await expect(signingFromEnv({ C2PA_CERTIFICATE: join(dir, 'chain.pem') })).rejects.toThrow(/C2PA_CERTIFICATE and C2PA_PRIVATE_KEY go together/);
    await expect(signingFromEnv({ C2PA_CERTIFICATE: join(dir, 'missing.pem'), C2PA_PRIVATE_KEY: join(dir, 'key.pem') })).rejects.toThrow(/C2PA_CERTIFICATE: cannot read .*missing\.pem \(ENOENT\)/);
    expect(await signingFromEnv({})).toEqual({ signer: undefined, unsignedBecause: 'no C2PA signing certificate is configured' });
  });
});
