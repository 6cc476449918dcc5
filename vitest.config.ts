import { availableParallelism } from 'node:os';
import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Vitest's default leaves a core idle (one worker on 2 cores), while most specs wait on
    // loopback servers, child processes and paced image calls: two files at once on 2 cores
    // took the suite from over 7 minutes to about 4.5, every spec passing.
    maxWorkers: Math.max(2, availableParallelism()),
  },
});
