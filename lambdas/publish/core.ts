import { avatarKeys } from '../shared/keys.ts';
import type { GenerationMode, Persona } from '../shared/persona.ts';
import type { StageDeps } from '../shared/stage.ts';
import { objectUrl } from '../shared/urls.ts';
import type { BaseResult } from '../generate-base/core.ts';
import type { SplitResult } from '../split-grid/core.ts';
import type { PromptResult } from '../write-prompt/core.ts';
import type { TokenUsage } from '../shared/models.ts';

export interface PublishEvent {
  personaId: string;
  runId: string;
  persona: Persona;
  images: number;
  mode: GenerationMode;
  prompt: PromptResult;
  base: BaseResult;
  grids: SplitResult[];
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
}

export interface PublishResult {
  personaId: string;
  runId: string;
  images: PublishedImage[];
  manifestKey: string;
  manifestUrl: string;
  estimatedCostUsd: number | null;
  /** Retired models skipped and the like, for a person to act on. */
  warnings: string[];
}

interface UsageLine {
  stage: string;
  model: string | undefined;
  usage: TokenUsage | undefined;
  estimatedCostUsd: number | null;
}

/** The run's estimate: unknown as soon as one call's is. */
function sumCosts(lines: UsageLine[]): number | null {
  if (lines.some((l) => l.estimatedCostUsd === null)) return null;
  return Math.round(lines.reduce((sum, l) => sum + l.estimatedCostUsd!, 0) * 1e6) / 1e6;
}

/** Copies the tiles to their final names, writes the manifest and returns where they are. */
export async function publish(event: PublishEvent, deps: StageDeps<'store'>): Promise<PublishResult> {
  const started = Date.now();
  const keys = avatarKeys(event.personaId);
  const format = deps.settings.tileFormat;
  const grids = [...event.grids].sort((a, b) => a.gridIndex - b.gridIndex);
  const tiles = grids.flatMap((g) => g.tiles.map((tile) => ({ ...tile, model: g.generation.model }))).slice(0, event.images);
  const images = await Promise.all(
    tiles.map(async (tile, i): Promise<PublishedImage> => {
      const key = keys.image(i + 1, tile.key.endsWith('.png') ? 'png' : format);
      await deps.store.copy(tile.key, key);
      return { n: i + 1, key, url: await objectUrl(deps, key), width: tile.box.width, height: tile.box.height, bytes: tile.bytes, model: tile.model };
    }),
  );
  const line = (stage: string, g: { model?: string; usage?: TokenUsage; estimatedCostUsd: number | null }): UsageLine => ({
    stage,
    model: g.model,
    usage: g.usage,
    estimatedCostUsd: g.estimatedCostUsd,
  });
  const usage: UsageLine[] = [
    line('write-prompt', event.prompt),
    line('generate-base', event.base),
    ...grids.map((g) => line(`generate-grid ${g.gridIndex}`, g.generation)),
  ];
  const warnings = [...new Set([event.base, ...grids.map((g) => g.generation)].flatMap((g) => g.warnings ?? []))];
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
    images: images.map(({ url: _url, ...image }) => image),
  };
  await deps.store.putJson(keys.manifest, manifest);
  return {
    personaId: event.personaId,
    runId: event.runId,
    images,
    manifestKey: keys.manifest,
    manifestUrl: await objectUrl(deps, keys.manifest),
    estimatedCostUsd,
    warnings,
  };
}
