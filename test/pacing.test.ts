import { describe, expect, it } from 'vitest';
import { imageCalls, runBatch, startBatchWorld, team } from './support.ts';

// Runs alone, after the other files (vitest.config.ts): it measures throughput against the clock.
describe('a batch of personas, paced', () => {
  it('publishes 24 of 24 against an API limited to 120 images a minute, its image calls at 90% of the limit or more', async () => {
    // The identity check's CPU is not what this measures: without it a small machine keeps up.
    const world = await startBatchWorld({ imagesPerMinute: 120, env: { IMAGES_PER_MINUTE: '120', IDENTITY_POLICY: 'off' } });
    const report = await runBatch(world, team(24), 'team-of-24');
    expect(report.counts).toEqual({ total: 24, SUCCEEDED: 24, FAILED: 0, SKIPPED: 0 });
    expect(report.personas.map((p) => p.personaId)).toEqual(team(24).map((_, i) => `member-${i + 1}`));
    for (const p of report.personas) expect(p.avatars).toHaveLength(4);
    const drawn = imageCalls(world.backend!).filter((c) => !c.rateLimited);
    expect(drawn).toHaveLength(48);
    const perMinute = ((drawn.length - 1) * 60_000) / (drawn.at(-1)!.at - drawn[0]!.at);
    expect(perMinute).toBeGreaterThanOrEqual(0.9 * 120);
    // And never above it for long: the API refused next to nothing.
    expect(imageCalls(world.backend!).filter((c) => c.rateLimited).length).toBeLessThan(10);
  }, 120_000);
});
