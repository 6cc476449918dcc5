/** Where the identity check's model files and tfjs's WASM binaries are, in a bundle or in node_modules. */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The model files the check loads: the face detector, the mesh that aligns the face, the description model. */
export const FACE_MODELS = ['blazeface', 'facemesh', 'faceres'];

/** Beside a Lambda bundle (infra copies them there), else in node_modules. */
export function faceAssetDirs(): { models: string; wasm: string } {
  const here = typeof __filename === 'string' ? dirname(__filename) : dirname(fileURLToPath(import.meta.url));
  if (existsSync(join(here, 'face-models'))) return { models: join(here, 'face-models'), wasm: join(here, 'tfjs-wasm') };
  const require = createRequire(join(here, 'assets.ts'));
  return { models: join(dirname(dirname(require.resolve('@vladmandic/human'))), 'models'), wasm: dirname(require.resolve('@tensorflow/tfjs-backend-wasm')) };
}
