import { avatarKeys } from '../shared/keys.ts';
import type { GenerationMode, Persona } from '../shared/persona.ts';
import type { StageDeps } from '../shared/stage.ts';
import { objectUrl } from '../shared/urls.ts';
import type { BaseResult } from '../generate-base/core.ts';
import type { SplitResult } from '../split-grid/core.ts';
import type { PromptResult } from '../write-prompt/core.ts';
import { estimateCostUsd, type Usage } from './cost.ts';

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
}

export interface PublishResult {
  personaId: string;
  runId: string;
  images: PublishedImage[];
  manifestKey: string;
  manifestUrl: string;
  estimatedCostUsd: number | null;
}

interface UsageLine {
  stage: string;
  model: string;
  usage: Usage | undefined;
}

function sumCosts(lines: UsageLine[]): number | null {
  let total = 0;
  for (const line of lines) {
    if (!line.usage) continue;
    const cost = estimateCostUsd(line.model, line.usage);
    if (cost === null) return null;
    total += cost;
  }
  return Math.round(total * 1e6) / 1e6;
}

/** Copies the tiles to their final names, writes the manifest and returns where they are. */
export async function publish(event: PublishEvent, deps: StageDeps): Promise<PublishResult> {
  const started = Date.now();
  const keys = avatarKeys(event.personaId);
  const format = deps.settings.tileFormat;
  const tiles = [...event.grids].sort((a, b) => a.gridIndex - b.gridIndex).flatMap((g) => g.tiles).slice(0, event.images);
  const images = await Promise.all(
    tiles.map(async (tile, i): Promise<PublishedImage> => {
      const key = keys.image(i + 1, tile.key.endsWith('.png') ? 'png' : format);
      await deps.store.copy(tile.key, key);
      return { n: i + 1, key, url: await objectUrl(deps, key), width: tile.box.width, height: tile.box.height, bytes: tile.bytes };
    }),
  );
  const usage: UsageLine[] = [
    { stage: 'write-prompt', model: deps.settings.textModel, usage: event.prompt.usage },
    { stage: 'generate-base', model: event.base.model, usage: event.base.usage },
    ...event.grids.map((g) => ({ stage: `generate-grid ${g.gridIndex}`, model: g.generation.model, usage: g.generation.usage })),
  ];
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
    usage: usage.filter((u) => u.usage).map((u) => ({ ...u, estimatedCostUsd: estimateCostUsd(u.model, u.usage) })),
    estimatedCostUsd,
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
  };
}
