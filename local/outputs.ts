/** Saves what a run or a batch published to a folder a person opens: images, manifest, contact sheet, gallery. */
import { mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import { basename, join, relative } from 'node:path';
import type { PublishResult } from '../lambdas/publish/core.ts';
import { contactSheet } from '../lambdas/report-batch/contact-sheet.ts';
import type { BatchReport } from '../lambdas/shared/batch.ts';
import type { Clock } from '../lambdas/shared/clock.ts';
import { runKeys } from '../lambdas/shared/keys.ts';
import { isMissingObject, type ObjectStore } from '../lambdas/shared/store.ts';
import { writeContactSheet, writeGallery } from './gallery.ts';

/** What a run saves into its folder: an earlier run's leave the folder before the next one's arrive. */
const RUN_OUTPUT = /^(img_\d+\.(png|webp|jpe?g)|manifest\.json|contact-sheet\.png|index\.html|grids)$/;

export async function saveOutputs(store: ObjectStore, output: PublishResult, outDir: string): Promise<string[]> {
  await mkdir(outDir, { recursive: true });
  // Only what a run writes: anything else a person put there stays.
  for (const entry of await readdir(outDir)) if (RUN_OUTPUT.test(entry)) await rm(join(outDir, entry), { recursive: true, force: true });
  const files = await Promise.all(
    output.images.map(async (image) => {
      const file = basename(image.key);
      await writeFile(join(outDir, file), await store.getBytes(image.key));
      return file;
    }),
  );
  const manifest = JSON.parse(await store.getText(output.manifestKey)) as { prompt: { text: string } };
  await writeFile(join(outDir, 'manifest.json'), `${JSON.stringify(manifest, null, 2)}\n`);
  await writeContactSheet(files.map((f) => join(outDir, f)), join(outDir, 'contact-sheet.png'));
  await writeGallery(outDir, output, files, manifest.prompt.text);
  return files;
}

/**
 * The run's 2x2 grids as the image API drew them (the last draw of each), into `dir`, for
 * `avatars split` to be tried on real grids: grid_0.png, grid_1.png… None in separate mode.
 */
export async function saveGrids(store: ObjectStore, output: Pick<PublishResult, 'personaId' | 'runId'>, dir: string): Promise<string[]> {
  const keys = runKeys(output.personaId, output.runId);
  const saved: string[] = [];
  for (let i = 0; ; i++) {
    let grid: Buffer;
    try {
      grid = await store.getBytes(keys.grid(i));
    } catch (error) {
      if (isMissingObject(error)) return saved;
      throw error;
    }
    await mkdir(dir, { recursive: true });
    saved.push(join(dir, basename(keys.grid(i))));
    await writeFile(saved.at(-1)!, grid);
  }
}

/**
 * Each batch run's own folder under out/batches/: the batch id (named from the file, so the same
 * in every --data folder and mode) and when it ran, UTC, so no run overwrites another's report.
 */
export function batchFolder(batchId: string, clock: Clock): string {
  return `${batchId}-${clock.now().toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z')}`;
}

/** The report and contact sheet in a folder a person opens, each avatar copied beside them. */
export async function saveReport(store: ObjectStore, report: BatchReport, outDir: string): Promise<void> {
  await mkdir(outDir, { recursive: true });
  const local = new Map<string, string>();
  for (const persona of report.personas) {
    for (const avatar of persona.avatars ?? []) {
      const file = join(outDir, persona.personaId!, basename(avatar.key));
      await mkdir(join(outDir, persona.personaId!), { recursive: true });
      await writeFile(file, await store.getBytes(avatar.key));
      local.set(avatar.key, relative(outDir, file));
    }
  }
  await writeFile(join(outDir, 'report.json'), `${JSON.stringify(report, null, 2)}\n`);
  await writeFile(join(outDir, 'index.html'), contactSheet(report, (avatar) => local.get(avatar.key) ?? avatar.url ?? avatar.key));
}
