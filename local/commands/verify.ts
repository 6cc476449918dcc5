import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { manifestActions, manifestSigner, readC2pa } from '../../lambdas/publish/c2pa.ts';
import { formatOf } from '../../lambdas/shared/image-provider.ts';
import { DEV_SIGNER_NAME } from '../certificates.ts';

export interface VerifyFlags {
  trust: string[];
  data: string;
  json?: boolean;
}

/**
 * Reads each image's C2PA manifest and checks it: the signature, the hash of every byte outside
 * it, and the signer's chain against the CAs given (and the local development CA, if there is one).
 */
export async function verifyCommand(files: string[], flags: VerifyFlags): Promise<number> {
  const devCa = join(flags.data, 'c2pa', 'dev-ca.pem');
  const dev = existsSync(devCa);
  // Trusted here only: no reader elsewhere trusts the development CA unless told to.
  if (dev && !flags.json) process.stderr.write(`trusting the local development CA ${devCa} (and --trust); any other reader sees its signatures as untrusted\n`);
  const anchors = [...flags.trust, ...(dev ? [devCa] : [])].map((f) => readFileSync(f, 'utf8')).join('\n');
  let failed = 0;
  const results = [];
  for (const file of files) {
    let line: string;
    let result: Record<string, unknown>;
    try {
      const bytes = readFileSync(file);
      const format = formatOf(bytes);
      if (!format) throw new Error('not a PNG, JPEG or WebP image');
      const report = await readC2pa({ bytes, format }, anchors || undefined);
      if (!report) {
        result = { file, state: 'none' };
        line = `✗ ${file}: no C2PA manifest`;
      } else {
        const actions = manifestActions(report.manifest);
        const source = actions.map((a) => a.digitalSourceType).find(Boolean);
        const parent = report.parent ? `; parent signed by ${manifestSigner(report.parent)}` : '';
        result = { file, state: report.state, signer: manifestSigner(report.manifest), digitalSourceType: source, actions: actions.map((a) => a.action), failures: report.failures, parentSigner: manifestSigner(report.parent) };
        const mark = report.state === 'Invalid' ? '✗' : '✓';
        const signer = manifestSigner(report.manifest);
        const state = report.state === 'Trusted' && dev && signer === DEV_SIGNER_NAME ? 'Trusted here only (the local development CA)' : report.state;
        line = `${mark} ${file}: C2PA ${state}, signed by ${signer}; ${actions.map((a) => a.action).join(', ')}${source ? ` (${String(source).split('/').at(-1)})` : ''}${parent}${report.failures.length ? `; ${report.failures.join(', ')}` : ''}`;
      }
      if (report?.state !== 'Valid' && report?.state !== 'Trusted') failed++;
    } catch (error) {
      failed++;
      result = { file, state: 'error', error: (error as Error).message };
      line = `✗ ${file}: ${(error as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (error as Error).message}`;
    }
    results.push(result);
    if (!flags.json) process.stdout.write(`${line}\n`);
  }
  if (flags.json) process.stdout.write(`${JSON.stringify(results, null, 2)}\n`);
  return failed === 0 ? 0 : 1;
}
