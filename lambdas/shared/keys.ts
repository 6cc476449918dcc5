/**
 * The bucket layout, in one place: infra scopes IAM to these prefixes and every stage
 * builds its keys here.
 *
 *   personas/{personaId}.json | .jsonl        uploads that start runs
 *   rejected/{uploadKey}.error.json           why an upload started nothing
 *   runs/{personaId}/{runId}/...              intermediate prompt, base, grids, tiles (expire)
 *   avatars/{personaId}/img_{n}.png           final images, n from 1
 *   avatars/{personaId}/manifest.json         what the last successful run produced
 *   avatars/{personaId}/failures/{runId}.json why a run failed
 */
export const Prefixes = {
  personas: 'personas/',
  rejected: 'rejected/',
  runs: 'runs/',
  avatars: 'avatars/',
} as const;

export type TileFormat = 'png' | 'webp' | 'jpeg';

export const contentTypes: Record<TileFormat, string> = { png: 'image/png', webp: 'image/webp', jpeg: 'image/jpeg' };

/** File extension of a format: jpeg files are .jpg. */
export function extensionOf(format: TileFormat): string {
  return format === 'jpeg' ? 'jpg' : format;
}

export function runKeys(personaId: string, runId: string) {
  const root = `${Prefixes.runs}${personaId}/${runId}`;
  return {
    prompt: `${root}/prompt.txt`,
    saferPrompt: (target: 'base' | 'grid') => `${root}/${target}-prompt-safer.txt`,
    basePrompt: `${root}/base-prompt.txt`,
    base: `${root}/base.png`,
    grid: (gridIndex: number) => `${root}/grid_${gridIndex}.png`,
    tile: (gridIndex: number, tileIndex: number, format: TileFormat = 'png') =>
      `${root}/tiles/grid_${gridIndex}_${tileIndex}.${extensionOf(format)}`,
  };
}

export function avatarKeys(personaId: string) {
  const root = `${Prefixes.avatars}${personaId}`;
  return {
    image: (n: number, format: TileFormat = 'png') => `${root}/img_${n}.${extensionOf(format)}`,
    manifest: `${root}/manifest.json`,
    failure: (runId: string) => `${root}/failures/${runId}.json`,
  };
}

export function rejectedKey(uploadKey: string): string {
  return `${Prefixes.rejected}${uploadKey}.error.json`;
}
