import sharp from 'sharp';
import { contentTypes, runKeys } from '../shared/keys.ts';
import type { StageDeps } from '../shared/stage.ts';
import type { GridResult } from '../generate-grid/core.ts';
import { GRID_COLS, GRID_ROWS } from '../shared/prompts.ts';
import type { Box } from './detect.ts';
import { splitGrid as splitImage } from './split.ts';
import { GridLayoutMismatch, REDRAWN } from '../shared/errors.ts';

export interface SplitGridEvent {
  personaId: string;
  runId: string;
  generated: GridResult;
}

export interface TileInfo {
  key: string;
  /** The image the model drew that this tile shows: its grid, or in separate mode the tile itself. */
  sourceKey: string;
  box: Box;
  bytes: number;
}

export interface SplitResult {
  gridIndex: number;
  tiles: TileInfo[];
  generation: Omit<GridResult, 'imageKeys' | 'gridKey'>;
  ms: number;
}

/** Cuts a grid into its cells (or, in separate mode, measures the images) and stores the tiles. */
export async function splitGrid(event: SplitGridEvent, deps: StageDeps<'store'>): Promise<SplitResult> {
  const started = Date.now();
  const { gridKey, imageKeys, ...generation } = event.generated;
  const keys = runKeys(event.personaId, event.runId);
  let tiles: TileInfo[];
  if (imageKeys) {
    tiles = await Promise.all(
      imageKeys.map(async (key) => {
        const image = await deps.store.getBytes(key);
        const { width = 0, height = 0 } = await sharp(image).metadata();
        return { key, sourceKey: key, box: { left: 0, top: 0, width, height }, bytes: image.length };
      }),
    );
  } else {
    const format = deps.settings.tileFormat;
    const what = `grid ${generation.gridIndex} for persona ${event.personaId}`;
    const cut = await splitImage(await deps.store.getBytes(gridKey!), GRID_ROWS, GRID_COLS, format, what).catch((error: unknown) => {
      if (error instanceof GridLayoutMismatch) error.message += `; ${REDRAWN}`;
      throw error;
    });
    tiles = await Promise.all(
      cut.slice(0, generation.count).map(async (tile, i) => {
        const key = keys.tile(generation.gridIndex, i, format);
        await deps.store.put(key, tile.data, contentTypes[format]);
        return { key, sourceKey: gridKey!, box: tile.box, bytes: tile.data.length };
      }),
    );
  }
  return { gridIndex: generation.gridIndex, tiles, generation, ms: Date.now() - started };
}
