import { generateImage, type ImageUsage } from '../shared/images.ts';
import { runKeys } from '../shared/keys.ts';
import { primaryBio, type Persona } from '../shared/persona.ts';
import type { StageDeps } from '../shared/stage.ts';

export interface GenerateBaseEvent {
  personaId: string;
  runId: string;
  persona: Persona;
  /** A prompt to use instead of the one built from the bio: the safer rewrite after a refusal. */
  promptKey?: string;
}

export interface BaseResult {
  baseKey: string;
  model: string;
  usage?: ImageUsage;
  ms: number;
}

/** The seed's base selfie: one person, from the main bio and gender, ready to vary. */
export function basePrompt(persona: Persona): string {
  const bio = primaryBio(persona).replace(/\s+/g, ' ').slice(0, 500);
  return [
    `A casual, photorealistic smartphone selfie of a ${persona.gender} person.`,
    `About them: ${bio}`,
    'Head and shoulders, looking at the camera, natural light, simple background, no text, no logos.',
  ].join(' ');
}

export async function generateBase(event: GenerateBaseEvent, deps: StageDeps): Promise<BaseResult> {
  const started = Date.now();
  const keys = runKeys(event.personaId, event.runId);
  let prompt: string;
  if (event.promptKey) {
    prompt = await deps.store.getText(event.promptKey);
  } else {
    prompt = basePrompt(event.persona);
    // Kept so a refusal can be rewritten from what was actually sent.
    await deps.store.put(keys.basePrompt, prompt, 'text/plain; charset=utf-8');
  }
  const result = await generateImage(deps, `base image for persona ${event.personaId}`, prompt);
  await deps.store.put(keys.base, result.images[0]!, 'image/png');
  return { baseKey: keys.base, model: result.model, ...(result.usage ? { usage: result.usage } : {}), ms: Date.now() - started };
}
