#!/usr/bin/env node
// `avatars`: run the workflow locally, replay one stage, start and follow executions, split grids.
// Plain JavaScript on purpose: Node keeps the compiled code of what it loads on disk (in the
// system's temporary folder), so every start after the first skips parsing and compiling, most of
// a short command's time; it does so only when the entry point is not TypeScript itself.
import { enableCompileCache } from 'node:module';
import { availableParallelism } from 'node:os';

enableCompileCache();
// `split` keeps every pool thread in sharp: threads beyond the cores only add switching and
// memory to fault in (about 5% faster on 2 cores, measured A/B). Libuv reads this once, at the pool's
// first use, which is before any command module runs.
if (process.argv[2] === 'split') process.env.UV_THREADPOOL_SIZE ??= String(availableParallelism());
await import('./cli.ts');
