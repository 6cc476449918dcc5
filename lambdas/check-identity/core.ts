import { IdentityMismatch, NotDrawnInBatch, REDRAWN } from '../shared/errors.ts';
import { runKeys } from '../shared/keys.ts';
import type { StageDeps } from '../shared/stage.ts';
import type { SplitResult } from '../split-grid/core.ts';
import { similarity, subjectOf } from './faces.ts';

export interface CheckIdentityEvent {
  personaId: string;
  runId: string;
  /** The base selfie: who every avatar must show. */
  baseKey: string;
  split: SplitResult;
  /** `batch`: the grid came from OpenAI's Batch API; a refused one is drawn again in a later round. */
  imageApi?: 'sync' | 'batch' | null;
}

/** One avatar's verdict, as the manifest and the gallery show it. */
export interface IdentityVerdict {
  /** Faces found in the avatar; null when not checked. */
  faces: number | null;
  /** Cosine similarity of its face to the base's; null when there was nothing to compare. */
  similarity: number | null;
  pass: boolean;
  reason: string;
}

export interface CheckedGrid extends SplitResult {
  identity: { policy: 'redraw' | 'flag' | 'off'; threshold: number; verdicts: IdentityVerdict[] };
}

/**
 * Compares the face in every avatar of a grid with the base selfie's. With IDENTITY_POLICY=redraw
 * a grid with a panel that fails is an IdentityMismatch (the workflow draws it again); with flag
 * every avatar is published with its verdict; off checks nothing.
 */
export async function checkIdentity(event: CheckIdentityEvent, deps: StageDeps<'store' | 'faces'>): Promise<CheckedGrid> {
  const { identityPolicy: policy, identityThreshold: threshold } = deps.settings;
  const { split } = event;
  if (policy === 'off') {
    return { ...split, identity: { policy, threshold, verdicts: split.tiles.map(() => ({ faces: null, similarity: null, pass: true, reason: 'not checked (IDENTITY_POLICY=off)' })) } };
  }
  const base = subjectOf(await deps.faces.facesIn(await deps.store.getBytes(event.baseKey)));
  const verdicts = await Promise.all(
    split.tiles.map(async (tile): Promise<IdentityVerdict> => {
      const faces = await deps.faces.facesIn(await deps.store.getBytes(tile.key));
      const subject = subjectOf(faces);
      if (!base) return { faces: faces.length, similarity: null, pass: true, reason: 'not compared: no face found in the base image' };
      if (!subject) return { faces: faces.length, similarity: null, pass: false, reason: 'no face found' };
      const score = Math.round(similarity(base.embedding, subject.embedding) * 1000) / 1000;
      return score >= threshold
        ? { faces: faces.length, similarity: score, pass: true, reason: `the base's person (${score} ≥ ${threshold})` }
        : { faces: faces.length, similarity: score, pass: false, reason: `another person? (${score} < ${threshold})` };
    }),
  );
  const failing = verdicts.map((v, i) => ({ ...v, panel: i + 1 })).filter((v) => !v.pass);
  if (policy === 'redraw' && failing.length > 0) {
    const why = `grid ${split.gridIndex} for persona ${event.personaId}: ${failing.map((v) => `panel ${v.panel}: ${v.reason}`).join('; ')}`;
    if (event.imageApi === 'batch') {
      // Drawn again in the batch's next OpenAI round, not here: the mark tells the round which grid.
      await deps.store.putJson(runKeys(event.personaId, event.runId).identityMismatch(split.gridIndex), { reason: why });
      throw new NotDrawnInBatch(`${why}; in batch mode the grid is drawn again in the batch's next OpenAI batch round (twice at most), under the run's next attempt`);
    }
    throw new IdentityMismatch(`${why}; ${REDRAWN} (IDENTITY_POLICY=flag publishes with verdicts instead)`);
  }
  return { ...split, identity: { policy, threshold, verdicts } };
}
