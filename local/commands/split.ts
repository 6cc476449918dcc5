import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { basename, extname, join } from 'node:path';
import { extensionOf, type TileFormat } from '../../lambdas/shared/keys.ts';
import { release, splitGrid } from '../../lambdas/split-grid/split.ts';

export interface SplitFlags {
  out: string;
  rows: number;
  cols: number;
  format: TileFormat;
  seams?: boolean;
}

/**
 * One grid into DIR/<grid name>/img_<i>; false when it could not be split. Files are read and
 * written synchronously: under a megabyte from the page cache costs less than a turn in the
 * thread pool, which sharp keeps busy.
 */
async function splitOne(grid: string, flags: SplitFlags): Promise<boolean> {
  const name = basename(grid, extname(grid));
  try {
    const image = readFileSync(grid);
    const tiles = await splitGrid(image, flags.rows, flags.cols, flags.format, grid, { gutters: !flags.seams });
    release(image);
    const dir = join(flags.out, name);
    mkdirSync(dir, { recursive: true });
    tiles.forEach((tile, i) => writeFileSync(join(dir, `img_${i}.${extensionOf(flags.format)}`), tile.data));
    for (const tile of tiles) release(tile.data);
    process.stdout.write(`${grid}: ${tiles.map((t, i) => `img_${i} ${t.box.width}x${t.box.height}+${t.box.left}+${t.box.top}`).join(', ')}\n`);
    return true;
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    process.stderr.write(`✗ ${grid}: ${code === 'ENOENT' ? 'no such file' : `${(error as Error).name}: ${(error as Error).message}`}\n`);
    return false;
  }
}

export async function splitCommand(grids: string[], flags: SplitFlags): Promise<number> {
  // A grid per core at a time: decoding and encoding run in sharp's threads, detection in ours.
  const queue = [...grids];
  let failed = 0;
  const worker = async () => {
    for (let grid = queue.shift(); grid !== undefined; grid = queue.shift()) if (!(await splitOne(grid, flags))) failed++;
  };
  await Promise.all(Array.from({ length: Math.min(availableParallelism(), queue.length) }, worker));
  return failed === 0 ? 0 : 1;
}
