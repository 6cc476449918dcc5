import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startLocalEnvironment, type LocalEnvironment, type LocalEnvironmentOptions } from '../local/environment.ts';
import persona from '../events/persona.json' with { type: 'json' };

export { persona };

/** A fresh embedded S3 and offline backend on loopback, removed with its data on close(). */
export async function startTestEnvironment(options: Partial<LocalEnvironmentOptions> = {}): Promise<LocalEnvironment & { dir: string }> {
  const dir = mkdtempSync(join(tmpdir(), 'avatars-test-'));
  const env = await startLocalEnvironment({ dataDir: dir, env: { IMAGE_TIMEOUT_MS: '1500', ...options.env }, faults: options.faults, latencyMs: options.latencyMs });
  return {
    ...env,
    dir,
    close: async () => {
      await env.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
