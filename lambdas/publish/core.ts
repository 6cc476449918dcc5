import sharp from 'sharp';
import { RunAlreadyPublished } from '../shared/errors.ts';
import { avatarKeys, contentTypes, SUPERSEDED_TAG } from '../shared/keys.ts';
import type { GenerationMode, Persona } from '../shared/persona.ts';
import type { StageDeps } from '../shared/stage.ts';
import { objectUrl } from '../shared/urls.ts';
import type { BaseResult } from '../generate-base/core.ts';
import type { CheckedGrid, IdentityVerdict } from '../check-identity/core.ts';
import type { BaseCheck } from '../check-base/core.ts';
import { summarizeLook, type LookSummary } from '../shared/persona-look.ts';
import type { SplitResult } from '../split-grid/core.ts';
import type { PromptResult } from '../write-prompt/core.ts';
import type { TokenUsage } from '../shared/models.ts';
import { drawnImage, markAvatar, type DrawnImage, type Provenance } from './provenance.ts';
import { avatarDimensions, uniformAvatar } from './uniform.ts';

export interface PublishEvent {
  personaId: string;
  runId: string;
  persona: Persona;
  images: number;
  mode: GenerationMode;
  prompt: PromptResult;
  /** The base, with what check-base found (absent in runs from before it existed). */
  base: BaseResult & { check?: BaseCheck };
  /** Each grid's avatars, with their identity verdicts once checked. */
  grids: (SplitResult & Partial<Pick<CheckedGrid, 'identity'>>)[];
}

export interface PublishedImage {
  n: number;
  key: string;
  url: string;
  width: number;
  height: number;
  bytes: number;
  /** The image model that drew it. */
  model: string;
  /** Whether it shows the base's person, as check-identity found. */
  identity?: IdentityVerdict;
  /** How it is marked as AI-generated. */
  provenance: Provenance;
}

export interface PublishResult {
  personaId: string;
  runId: string;
  images: PublishedImage[];
  /** This run's manifest, which never changes. */
  manifestKey: string;
  manifestUrl: string;
  /** The persona's current manifest: this run's, until another run publishes. */
  currentManifestKey: string;
  estimatedCostUsd: number | null;
  /** Retired models skipped and the like, for a person to act on. */
  warnings: string[];
  /** The base's checks in brief (the manifest has them in full); null when it was not checked. */
  look: LookSummary | null;
}

interface UsageLine {
  stage: string;
  model: string | undefined;
  usage: TokenUsage | undefined;
  estimatedCostUsd: number | null;
  /** Drawn through OpenAI's Batch API (at batch price), by this OpenAI batch. */
  api?: 'batch';
  openAiBatchId?: string;
}

interface CurrentManifest {
  runId: string;
  manifestKey?: string;
  images: { key: string }[];
}

/**
 * The run the current manifest names. Only housekeeping depends on it, so a manifest that cannot
 * be read (a server without atomic writes, caught mid-write by a concurrent run) counts as none.
 */
async function currentRun(deps: StageDeps<'store'>, key: string): Promise<CurrentManifest | undefined> {
  try {
    return await deps.store.getJsonIfExists<CurrentManifest>(key);
  } catch (error) {
    if (!(error instanceof SyntaxError)) throw error;
    deps.logger.warn('current manifest unreadable; superseded runs not tagged', { key, error: error.message });
    return undefined;
  }
}

/** Tags a replaced run's objects, never one the current manifest names (it may have changed since). */
async function markSuperseded(deps: StageDeps<'store'>, run: CurrentManifest, currentKey: string): Promise<void> {
  const tags = { [SUPERSEDED_TAG.key]: SUPERSEDED_TAG.value };
  const current = await currentRun(deps, currentKey);
  const kept = new Set(current ? [...current.images.map((i) => i.key), current.manifestKey] : []);
  await Promise.all([...run.images.map((i) => i.key), run.manifestKey!].filter((key) => !kept.has(key)).map((key) => deps.store.tag(key, tags)));
}

/** Whether two encoded images show the same pixels. */
async function samePixels(a: Buffer, b: Buffer): Promise<boolean> {
  const [x, y] = await Promise.all([a, b].map((image) => sharp(image).raw().toBuffer({ resolveWithObject: true })));
  return x!.info.width === y!.info.width && x!.info.height === y!.info.height && x!.data.equals(y!.data);
}

/**
 * An avatar is written once (S3's conditional write): a retried Publish finds its own avatar there
 * (the same pixels: a signature is new every time) and keeps it; another avatar means another
 * writer had this run, and nothing is replaced. Returns the size of what is stored.
 */
async function writeOnce(deps: StageDeps<'store'>, key: string, body: Buffer, contentType: string, event: Pick<PublishEvent, 'personaId' | 'runId'>): Promise<number> {
  if (await deps.store.putNew(key, body, contentType)) return body.length;
  const stored = await deps.store.getBytes(key);
  if (!stored.equals(body) && !(await samePixels(stored, body).catch(() => false))) {
    throw new RunAlreadyPublished(`publish for persona ${event.personaId}: ${key} already holds another avatar; a published run is never rewritten: start the persona again under a new name`);
  }
  return stored.length;
}

/** The run's estimate: unknown as soon as one call's is. */
function sumCosts(lines: UsageLine[]): number | null {
  if (lines.some((l) => l.estimatedCostUsd == null)) return null;
  return Math.round(lines.reduce((sum, l) => sum + l.estimatedCostUsd!, 0) * 1e6) / 1e6;
}

/**
 * Crops every avatar of the run to one size, writes them and the run's manifest under the run's
 * own folder (never rewritten), and only then replaces the persona's current manifest in one write:
 * a reader sees one whole run or the one before, never a mix, and earlier runs stay as they were.
 */
export async function publish(event: PublishEvent, deps: StageDeps<'store' | 'signing'>): Promise<PublishResult> {
  const started = Date.now();
  const keys = avatarKeys(event.personaId);
  const runKeys = keys.run(event.runId);
  const { tileFormat: format, avatarSize, avatarAspect, outputCompression } = deps.settings;
  const grids = [...event.grids].sort((a, b) => a.gridIndex - b.gridIndex);
  const tiles = grids
    .flatMap((g) => g.tiles.map((tile, i) => ({ ...tile, model: g.generation.model, identity: g.identity?.verdicts[i] })))
    .slice(0, event.images);
  const size = avatarDimensions(tiles.map((t) => t.box), avatarSize, avatarAspect);
  const { signer, unsignedBecause } = await deps.signing.current();
  // Each drawn image (a grid) is read once, however many avatars it gave.
  const drawn = new Map<string, Promise<DrawnImage>>();
  const drawnOnce = (key: string) => drawn.get(key) ?? drawn.set(key, deps.store.getBytes(key).then((bytes) => drawnImage(key, bytes))).get(key)!;
  const images = await Promise.all(
    tiles.map(async (tile, i): Promise<PublishedImage> => {
      const key = runKeys.image(i + 1, format);
      const marking = { model: tile.model, credit: deps.settings.avatarCredit };
      // In separate mode the tile is the drawn image itself: read once.
      const [tileBytes, parent] = await Promise.all([tile.key === tile.sourceKey ? drawnOnce(tile.key).then((d) => d.bytes) : deps.store.getBytes(tile.key), drawnOnce(tile.sourceKey)]);
      const uniform = await uniformAvatar(tileBytes, size, format, outputCompression);
      const { bytes: avatar, provenance } = await markAvatar(uniform, format, size, { marking, parent, box: tile.box, title: key.split('/').at(-1)! }, signer);
      const bytes = await writeOnce(deps, key, avatar, contentTypes[format], event);
      return {
        n: i + 1,
        key,
        url: await objectUrl(deps, key),
        ...size,
        bytes,
        model: tile.model,
        ...(tile.identity ? { identity: tile.identity } : {}),
        provenance,
      };
    }),
  );
  const line = (stage: string, g: { model?: string; usage?: TokenUsage; estimatedCostUsd: number | null; api?: 'batch'; openAiBatchId?: string }): UsageLine => ({
    stage,
    model: g.model,
    usage: g.usage,
    estimatedCostUsd: g.estimatedCostUsd,
    ...(g.api ? { api: g.api, openAiBatchId: g.openAiBatchId } : {}),
  });
  const usage: UsageLine[] = [
    line('write-prompt', event.prompt),
    ...(event.base.check?.redraws ?? []).map((r) => line(`generate-base (refused, redraw ${r.attempt})`, r.refused)),
    line('generate-base', event.base),
    ...grids.map((g) => line(`generate-grid ${g.gridIndex}`, g.generation)),
  ];
  const warnings = [...new Set([event.base, ...grids.map((g) => g.generation)].flatMap((g) => g.warnings ?? []))];
  if (!signer) warnings.push(`avatars are not signed (C2PA): ${unsignedBecause ?? 'no signing certificate'}; they carry the IPTC marking only (README: Marking)`);
  const estimatedCostUsd = sumCosts(usage);
  const manifest = {
    personaId: event.personaId,
    runId: event.runId,
    publishedAt: new Date().toISOString(),
    persona: { firstname: event.persona.firstname, lastname: event.persona.lastname, gender: event.persona.gender },
    prompt: { key: event.prompt.promptKey, provider: event.prompt.provider, text: await deps.store.getText(event.prompt.promptKey) },
    mode: event.mode,
    model: event.base.model,
    size: deps.settings.imageSize,
    avatar: { ...size, aspect: avatarAspect, format },
    quality: deps.settings.imageQuality,
    timingsMs: {
      'write-prompt': event.prompt.ms,
      'generate-base': event.base.ms,
      grids: event.grids.map((g) => ({ gridIndex: g.gridIndex, 'generate-grid': g.generation.ms, 'split-grid': g.ms })),
      publish: Date.now() - started,
    },
    usage: usage.filter((u) => u.usage),
    estimatedCostUsd,
    warnings,
    ...(event.base.check ? { baseCheck: event.base.check } : {}),
    images: images.map(({ url: _url, ...image }) => image),
  };
  // A retried Publish finds its own manifest: the run stands as first published.
  const published = (await deps.store.putNew(runKeys.manifest, `${JSON.stringify(manifest, null, 2)}\n`, 'application/json'))
    ? manifest
    : await deps.store.getJsonIfExists<typeof manifest>(runKeys.manifest);
  if (!published || published.images.map((i) => i.key).join() !== manifest.images.map((i) => i.key).join()) {
    throw new RunAlreadyPublished(`publish for persona ${event.personaId}: run ${event.runId} already has a manifest of other avatars (${runKeys.manifest}); a published run is never rewritten: start the persona again under a new name`);
  }
  const previous = await currentRun(deps, keys.manifest);
  await deps.store.putJson(keys.manifest, { ...published, manifestKey: runKeys.manifest });
  // The run this one replaced is tagged, so an opt-in lifecycle rule can expire superseded runs.
  if (previous?.manifestKey && previous.runId !== event.runId) await markSuperseded(deps, previous, keys.manifest);
  // A run of the same persona that wrote after this one read: this run is the one replaced.
  const current = await currentRun(deps, keys.manifest);
  if (current && current.runId !== event.runId) await markSuperseded(deps, { runId: event.runId, manifestKey: runKeys.manifest, images }, keys.manifest);
  deps.metrics.record('RunsPublished', 1);
  deps.metrics.record('AvatarsPublished', images.length);
  return {
    personaId: event.personaId,
    runId: event.runId,
    images,
    manifestKey: runKeys.manifest,
    manifestUrl: await objectUrl(deps, runKeys.manifest),
    currentManifestKey: keys.manifest,
    estimatedCostUsd,
    warnings,
    look: event.base.check && event.base.check.policy !== 'off' ? summarizeLook(event.base.check) : null,
  };
}
