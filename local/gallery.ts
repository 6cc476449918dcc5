import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import sharp from 'sharp';
import type { PublishResult } from '../lambdas/publish/core.ts';
import { lookLine } from '../lambdas/shared/persona-look.ts';
import { escape } from '../lambdas/report-batch/contact-sheet.ts';

const THUMB = 256;

/** One PNG with every avatar side by side, four to a row. */
export async function writeContactSheet(files: string[], path: string): Promise<void> {
  const perRow = Math.min(4, files.length);
  const rows = Math.ceil(files.length / perRow);
  const gap = 8;
  const thumbs = await Promise.all(files.map((f) => sharp(f).resize(THUMB, THUMB, { fit: 'cover' }).toBuffer()));
  await sharp({ create: { width: perRow * (THUMB + gap) + gap, height: rows * (THUMB + gap) + gap, channels: 3, background: '#20232a' } })
    .composite(thumbs.map((input, i) => ({ input, left: gap + (i % perRow) * (THUMB + gap), top: gap + Math.floor(i / perRow) * (THUMB + gap) })))
    .png()
    .toFile(path);
}


/** A page a person can open: the avatars, the prompt, and what the run cost. */
export async function writeGallery(dir: string, result: PublishResult, files: string[], prompt: string): Promise<void> {
  const figures = result.images
    .map((image, i) => {
      // A flagged avatar (IDENTITY_POLICY=flag) is marked on the image itself, not only in words.
      const flagged = image.identity && !image.identity.pass;
      const identity = image.identity ? ` · ${image.identity.pass ? '✓' : '⚑ flagged:'} ${escape(image.identity.reason)}` : '';
      const { signed, signer, parent } = image.provenance;
      const drawn = parent.signedBy ? `; drawn image signed by ${escape(parent.signedBy)}` : '';
      // One line; who signed what on demand.
      const marking = `<details><summary>AI-generated${signed ? ', C2PA signed' : ', not signed'}</summary>IPTC XMP${signed ? `; C2PA signed by ${escape(signer ?? '')}${drawn}` : '; no C2PA manifest'}</details>`;
      return `<figure${flagged ? ' class="flagged"' : ''}><img src="${escape(files[i]!)}" alt="avatar ${image.n}${flagged ? ' (flagged)' : ''}"><figcaption>${image.n} · ${image.width}×${image.height}${identity}${marking}</figcaption></figure>`;
    })
    .join('\n');
  const html = `<!doctype html>
<meta charset="utf-8">
<title>Avatars for ${escape(result.personaId)}</title>
<style>
body{font-family:system-ui,sans-serif;background:#111;color:#eee;margin:2rem}
main{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:1rem}
img{width:100%;border-radius:8px;display:block}figcaption{font-size:.8rem;color:#aaa;margin-top:.3rem}
figure{margin:0}.flagged img{outline:4px solid #e5484d;outline-offset:-4px;opacity:.75}.flagged figcaption{color:#ff8a8a}
summary{cursor:pointer}details{margin-top:.2rem}
p{max-width:60rem;color:#ccc}
</style>
<h1>${escape(result.personaId)}</h1>
<p>Run ${escape(result.runId)} · estimated cost ${result.estimatedCostUsd === null ? 'unknown' : `$${result.estimatedCostUsd.toFixed(4)}`}</p>
${result.look ? `<p>Base: ${escape(lookLine(result.look))}</p>\n` : ''}<p>${escape(prompt)}</p>
<main>
${figures}
</main>
`;
  await writeFile(join(dir, 'index.html'), html);
}
