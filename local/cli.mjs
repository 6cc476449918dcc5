#!/usr/bin/env node
// `avatars`: run the workflow locally, replay one stage, start and follow executions, split grids.
// Plain JavaScript on purpose: Node keeps the compiled code of what it loads on disk (in the
// system's temporary folder), so every start after the first skips parsing and compiling, most of
// a short command's time; it does so only when the entry point is not TypeScript itself.
import { enableCompileCache } from 'node:module';

enableCompileCache();
await import('./cli.ts');
