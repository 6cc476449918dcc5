/** Saves what a run published to a folder a person opens: images, manifest, contact sheet, gallery. */
import { mkdir, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import type { PublishResult } from '../lambdas/publish/core.ts';
import { runKeys } from '../lambdas/shared/keys.ts';
import { isMissingObject, type ObjectStore } from '../lambdas/shared/store.ts';
import { writeContactSheet, writeGallery } from './gallery.ts';

export async function saveOutputs(store: ObjectStore, output: PublishResult, outDir: string): Promise<string[]> {
  await mkdir(outDir, { recursive: true });
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

