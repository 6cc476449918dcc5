/**
 * Where today's date comes from: model shutdowns are dates, so whatever reads "today" (the model
 * checks at synth and run start, the fallback advice, the offline backend's retired models) takes
 * it from a clock it is given. Deployed and local runs use the system's; tests about dates fix one.
 */
export interface Clock {
  now(): Date;
}

export const systemClock: Clock = { now: () => new Date() };

/** A clock stopped at `iso` (a date or a date-time). */
export function fixedClock(iso: string): Clock {
  const at = new Date(iso);
  if (Number.isNaN(at.getTime())) throw new Error(`not a date: ${iso}`);
  return { now: () => new Date(at) };
}

/** The clock's day, as the model table writes shutdown dates (UTC, YYYY-MM-DD). */
export function dayOf(clock: Clock): string {
  return clock.now().toISOString().slice(0, 10);
}
