import type { Avatar, BatchReport, Diversity, ReportEntry } from '../shared/batch.ts';
import { lookLine } from '../shared/persona-look.ts';

export const escape = (s: string) => s.replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]!);

type Src = (avatar: Avatar) => string;
const byUrl: Src = (avatar) => avatar.url ?? avatar.key;

/** The page's top: title and counts. */
function head(report: Omit<BatchReport, 'personas'>): string {
  const { counts } = report;
  return `<!doctype html>
<meta charset="utf-8">
<title>Batch ${escape(report.batchId)}</title>
<style>
body{font-family:system-ui,sans-serif;background:#111;color:#eee;margin:2rem}
table{border-collapse:collapse}th,td{padding:.4rem;border-bottom:1px solid #333;text-align:left;vertical-align:top}
th small{display:block;color:#999;font-weight:normal}img{width:96px;height:96px;object-fit:cover;border-radius:6px;margin-right:4px}
.failed{color:#f88}.skipped p{color:#aaa;margin:.2rem 0}p.look{color:#aaa;margin:.2rem 0;font-size:.85rem}tr.flagged img{outline:2px solid #fb3}
.diversity{color:#ccc}
</style>
<h1>Batch ${escape(report.batchId)}</h1>
<p>${counts.total} personas: ${counts.SUCCEEDED} published, ${counts.FAILED} failed, ${counts.SKIPPED} skipped · ${escape(report.personasKey)} · ${escape(report.finishedAt)}</p>
${report.diversity ? diversityBlock(report.diversity) : ''}${report.openAiBatch ? `<p>OpenAI Batch API: ${report.openAiBatch.batches.length} batches in ${report.openAiBatch.rounds} rounds, images $${report.openAiBatch.costUsd.toFixed(2)} (sync mode: $${report.openAiBatch.syncCostUsd.toFixed(2)})</p>\n` : ''}<table>
`;
}

const mix = (counts: Record<string, number>) =>
  Object.entries(counts)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([k, n]) => `${n} ${k}`)
    .join(', ') || 'none';

/** Who the batch asked for and who the face model saw, a line each: the batch's people at a glance. */
export function diversityLines(d: Diversity): string[] {
  if (d.checked === 0) return [];
  const pair = d.nearestPair ? `the most alike pair: ${d.nearestPair.personaId} and ${d.nearestPair.otherPersonaId}, ${d.nearestPair.similarity}` : 'no pair to compare';
  return [
    `people (${d.checked} bases checked): gender asked ${mix(d.gender.asked)}; read ${mix(d.gender.read)}; clear misses kept ${d.gender.misses}`,
    `apparent ages read: ${mix(d.age.read)}; ${d.age.asked} bios stated an age; misses kept ${d.age.misses}`,
    `look-alikes: ${d.lookalikes.redrawn} drawn again, ${d.lookalikes.keptFlagged} kept and flagged; ${pair}`,
  ];
}

function diversityBlock(d: Diversity): string {
  const lines = diversityLines(d);
  return lines.length === 0 ? '' : `<div class="diversity">${lines.map((l) => `<p>${escape(l.charAt(0).toUpperCase() + l.slice(1))}</p>`).join('\n')}</div>\n`;
}

/** A persona's row: its avatars, or its failure or skip with the reason. */
function row(p: ReportEntry, src: Src): string {
  const who = `<th>${escape(p.personaId ?? `line ${p.line}`)}<small>line ${p.line} · ${p.status}</small></th>`;
  const body =
    p.status === 'FAILED'
      ? `<td class="failed">${escape(`${p.error}: ${p.cause}`)}</td>`
      : `<td>${(p.avatars ?? []).map((a, i) => `<img src="${escape(src(a))}" alt="avatar ${i + 1}" loading="lazy">`).join('')}${p.reason ? `<p>${escape(p.reason)}</p>` : ''}${p.look ? `<p class="look">${escape(lookLine(p.look))}</p>` : ''}</td>`;
  return `<tr class="${p.status.toLowerCase()}${p.look?.misses.length ? ' flagged' : ''}">${who}${body}</tr>\n`;
}

const FOOT = '</table>\n';

/** The page as it is written, a row at a time: memory holds one persona, not the batch. */
export async function* contactSheetChunks(report: Omit<BatchReport, 'personas'>, personas: AsyncIterable<ReportEntry>, src: Src = byUrl): AsyncGenerator<string> {
  yield head(report);
  for await (const p of personas) yield row(p, src);
  yield FOOT;
}

/** A page of the whole batch: a row of avatars per persona, and each failure or skip with its reason. */
export function contactSheet(report: BatchReport, src: Src = byUrl): string {
  return `${head(report)}${report.personas.map((p) => row(p, src)).join('')}${FOOT}`;
}
