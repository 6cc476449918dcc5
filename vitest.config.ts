import { availableParallelism } from 'node:os';
import { defineConfig } from 'vitest/config';

const timeouts = { testTimeout: 60_000, hookTimeout: 60_000 };

export default defineConfig({
  test: {
    // Vitest's default leaves a core idle (one worker on 2 cores), while most specs wait on
    // loopback servers, child processes and paced image calls: two files at once on 2 cores.
    maxWorkers: Math.max(2, availableParallelism()),
    projects: [
      // Files share their worker's modules (isolate: false): the SDKs, sharp and the face
      // detector load once per worker instead of once per file (about 40 s of the suite).
      { test: { ...timeouts, name: 'specs', include: ['test/**/*.test.ts'], exclude: ['test/pacing.test.ts'], isolate: false } },
      // Throughput measured against the clock: alone, once the rest is done, so no other file's work is measured with it.
      { test: { ...timeouts, name: 'pacing', include: ['test/pacing.test.ts'], sequence: { groupOrder: 1 } } },
    ],
  },
});
