import ExifReader from 'exifreader';
import sharp from 'sharp';
import { describe, expect, it } from 'vitest';
import { marked, TRAINED_ALGORITHMIC_MEDIA } from '../lambdas/publish/marking.ts';
import { runLocally } from '../local/runner.ts';
import { persona, startTestEnvironment } from './support.ts';

/** What a reader that is not ours finds in the file's XMP. */
const xmpOf = (file: Buffer) => (ExifReader.load(file, { expanded: true }) as { xmp?: Record<string, { value: string }> }).xmp ?? {};

describe('avatars marked as AI-generated', () => {
  for (const format of ['png', 'webp', 'jpeg'] as const) {
    for (const alpha of [false, true]) {
      it(`writes IPTC's digital source type, the model and the credit into a ${format}${alpha ? ' with alpha' : ''}, its pixels untouched`, async () => {
        const image = await sharp({ create: { width: 96, height: 120, channels: alpha ? 4 : 3, background: { r: 180, g: 120, b: 90, alpha: 0.6 } } })
          .toFormat(format, format === 'webp' && alpha ? { lossless: true } : {})
          .toBuffer();
        const file = marked(image, format, { width: 96, height: 120 }, { model: 'gpt-image-2', credit: 'Avatars & <co>' });
        expect(xmpOf(file)).toMatchObject({ DigitalSourceType: { value: TRAINED_ALGORITHMIC_MEDIA }, AISystemUsed: { value: 'gpt-image-2' }, Credit: { value: 'Avatars & <co>' } });
        const [before, after] = await Promise.all([image, file].map((f) => sharp(f).raw().toBuffer({ resolveWithObject: true })));
        expect(after!.info).toEqual(before!.info);
        expect(after!.data.equals(before!.data)).toBe(true);
      });
    }
  }

  it('marks every published avatar, and the manifest says how each is marked', async () => {
    const env = await startTestEnvironment({ env: { TILE_FORMAT: 'jpeg', AVATAR_CREDIT: 'Example Corp synthetic personas' } });
    const outcome = await runLocally({ input: { persona, images: 4 }, deps: env.deps });
    if (outcome.status !== 'SUCCEEDED') throw new Error(outcome.cause);
    for (const image of outcome.output.images) {
      expect(xmpOf(await env.deps.store.getBytes(image.key)), image.key).toMatchObject({
        DigitalSourceType: { value: TRAINED_ALGORITHMIC_MEDIA },
        AISystemUsed: { value: image.model },
        Credit: { value: 'Example Corp synthetic personas' },
      });
    }
    const manifest = JSON.parse(await env.deps.store.getText(outcome.output.manifestKey));
    for (const image of manifest.images) expect(image.provenance).toEqual({ digitalSourceType: TRAINED_ALGORITHMIC_MEDIA, marking: 'xmp', signed: false, aiSystemUsed: 'gpt-image-2' });
  });
});
