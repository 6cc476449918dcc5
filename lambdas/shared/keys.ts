/**
 * The bucket layout, in one place: infra scopes IAM to these prefixes and every stage
 * builds its keys here.
 *
 *   personas/{personaId}.json | .jsonl        uploads that start runs
 *   rejected/{uploadKey}.error.json           why an upload started nothing
 *   runs/{personaId}/{runId}/...              intermediate prompt, base, grids, tiles (expire)
 *   avatars/{personaId}/runs/{runId}/img_{n}.png   a run's avatars, n from 1: never rewritten
 *   avatars/{personaId}/runs/{runId}/manifest.json that run's manifest
 *   avatars/{personaId}/manifest.json         the current manifest: a copy of the latest run's
 *   avatars/{personaId}/failures/{runId}.json why a run failed
 *   batches/{batchId}/personas.jsonl          a batch's file, when not uploaded under personas/
 *   batches/{batchId}/items.jsonl             the personas the batch runs, each with its turn
 *   batches/{batchId}/plan.json               what it skips (bad lines, duplicates, published)
 *   batches/{batchId}/results/...             the Map Run's results (Step Functions' ResultWriter)
 *   batches/{batchId}/report.json, index.html one entry per persona; a contact sheet
 *   faces/log/{seq}.json                      the face index: one persona's face each, written once
 *   faces/chunks/{start}.json                 a thousand of them in one object, for a quick cold read
 */
export const Prefixes = {
  personas: 'personas/',
  rejected: 'rejected/',
  runs: 'runs/',
  avatars: 'avatars/',
  batches: 'batches/',
  faces: 'faces/',
} as const;

export type TileFormat = 'png' | 'webp' | 'jpeg';

export const contentTypes: Record<TileFormat, string> = { png: 'image/png', webp: 'image/webp', jpeg: 'image/jpeg' };

/**
 * sharp's options for every PNG we write, tiles and avatars (a tile of the avatar size is
 * published as it is). Each row filtered the way that suits it best, as Pillow does: unfiltered,
 * photographic tiles came out 1.6x the Python service's bytes (0.9x on flat drawings). Filtered,
 * a fast zlib level costs little size: level 3 makes 0.9-1.05x its bytes on photographs, and
 * level 6 saves another 1% for a fifth more time.
 */
export const PNG_OPTIONS = { compressionLevel: 3, adaptiveFiltering: true } as const;

/** File extension of a format: jpeg files are .jpg. */
export function extensionOf(format: TileFormat): string {
  return format === 'jpeg' ? 'jpg' : format;
}

export function runKeys(personaId: string, runId: string) {
  const root = `${Prefixes.runs}${personaId}/${runId}`;
  return {
    /** The run's intermediate files, as a prefix. */
    folder: `${root}/`,
    prompt: `${root}/prompt.txt`,
    saferPrompt: (target: 'base' | 'grid') => `${root}/${target}-prompt-safer.txt`,
    basePrompt: `${root}/base-prompt.txt`,
    /** The prompt of the base's n-th redraw (from 1), away from what the base checks refused. */
    baseRedrawPrompt: (n: number) => `${root}/base-redraw-${n}.txt`,
    base: `${root}/base.png`,
    /** What OpenAI's Batch API drew for the run (a batch in batch mode): each image's key, batch and usage. */
    drawnInBatch: `${root}/openai-batch.json`,
    /** Batch mode: the base check-base refused, with the prompt to draw it again from in a later OpenAI batch round. */
    baseRefused: `${root}/base-refused.json`,
    /** Batch mode: the base's redraws in earlier attempts of the run, for its check to count and its manifest to show. */
    baseRedraws: `${root}/base-redraws.json`,
    /** Batch mode: a grid the identity check refused, drawn again in a later OpenAI batch round. */
    identityMismatch: (gridIndex: number) => `${root}/identity-mismatch-grid_${gridIndex}.json`,
    grid: (gridIndex: number) => `${root}/grid_${gridIndex}.png`,
    tile: (gridIndex: number, tileIndex: number, format: TileFormat = 'png') =>
      `${root}/tiles/grid_${gridIndex}_${tileIndex}.${extensionOf(format)}`,
  };
}

export function avatarKeys(personaId: string) {
  const root = `${Prefixes.avatars}${personaId}`;
  return {
    /** One run's folder: written once, never changed. */
    run: (runId: string) => ({
      /** The run's published files, as a prefix. */
      folder: `${root}/runs/${runId}/`,
      image: (n: number, format: TileFormat = 'png') => `${root}/runs/${runId}/img_${n}.${extensionOf(format)}`,
      manifest: `${root}/runs/${runId}/manifest.json`,
    }),
    /** The current manifest, replaced in one write by each run that publishes. */
    manifest: `${root}/manifest.json`,
    failure: (runId: string) => `${root}/failures/${runId}.json`,
  };
}

/** The tag publish puts on a run's objects once another run has replaced it as current. */
export const SUPERSEDED_TAG = { key: 'avatar-run', value: 'superseded' } as const;

export function rejectedKey(uploadKey: string): string {
  return `${Prefixes.rejected}${uploadKey}.error.json`;
}

export function batchKeys(batchId: string) {
  const root = `${Prefixes.batches}${batchId}`;
  return {
    root,
    personas: `${root}/personas.jsonl`,
    items: `${root}/items.jsonl`,
    plan: `${root}/plan.json`,
    results: `${root}/results`,
    report: `${root}/report.json`,
    index: `${root}/index.html`,
    /** Batch mode: each round's OpenAI batches and what every persona's image calls came to. */
    rounds: `${root}/openai-rounds.json`,
    /** A round's request file, kept until it is submitted (a SubmitRound run again reads it). */
    roundFile: (round: number, file: string) => `${root}/rounds/${round}/${file}.jsonl`,
  };
}

/** The face index (lambdas/shared/face-index.ts): a log numbered from 0, and its chunks. */
export const faceIndexKeys = {
  entry: (seq: number) => `${Prefixes.faces}log/${String(seq).padStart(10, '0')}.json`,
  chunk: (start: number) => `${Prefixes.faces}chunks/${String(start).padStart(10, '0')}.json`,
};
