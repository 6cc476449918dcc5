/**
 * The offline backend's faults, in one table: what each does and which calls it hits unless
 * `@ROUTE` says otherwise. `--help`, README and the parser all read it.
 */
import { UsageError } from './usage-error.ts';

export const ROUTES = ['generations', 'edits', 'chat', 'moderations', 'batches'] as const;
export type Route = (typeof ROUTES)[number];

const IMAGES: Route[] = ['generations', 'edits'];

export const FAULT_KINDS = {
  'rate-limit': { routes: IMAGES, does: '429 with retry-after: 1' },
  'server-error': { routes: IMAGES, does: 'a 500' },
  hang: { routes: IMAGES, does: 'no answer: the call times out (locally after a short wait)' },
  policy: { routes: IMAGES, does: 'a moderation_blocked refusal' },
  layout: { routes: ['edits'], does: 'a grid of three panels, drawn again' },
  'model-gone': { routes: IMAGES, does: 'model_not_found, as a retired model answers' },
  corrupt: { routes: IMAGES, does: 'a truncated image' },
  flagged: { routes: ['moderations'], does: 'the moderation check flags the prompt' },
  impostor: { routes: ['edits'], does: "another person in a grid's second panel" },
  expire: { routes: ['batches'], does: 'an OpenAI batch expires half done: what it drew is kept, the rest is never drawn' },
} satisfies Record<string, { routes: Route[]; does: string }>;

export type FaultKind = keyof typeof FAULT_KINDS;

export interface Fault {
  kind: FaultKind;
  /** How many matching requests fail this way before the backend behaves; Infinity for always. */
  times: number;
  /** Which endpoint; the kind's own (FAULT_KINDS) when not given. */
  route?: Route;
}

const kinds = Object.keys(FAULT_KINDS) as FaultKind[];
export const FAULT_SYNTAX = `KIND[:TIMES|always][@${ROUTES.join('|')}]`;

/** The endpoints a fault hits. */
export function routesOf(fault: Fault): readonly Route[] {
  return fault.route ? [fault.route] : FAULT_KINDS[fault.kind].routes;
}

function parseFault(spec: string): Fault {
  const match = new RegExp(`^(${kinds.join('|')})(?::(\\d+|always))?(?:@(${ROUTES.join('|')}))?$`).exec(spec);
  if (!match) throw new UsageError(`unknown fault "${spec}": use ${FAULT_SYNTAX}, KIND one of ${kinds.join(', ')}`);
  const times = match[2] === 'always' ? Infinity : Number(match[2] ?? 1);
  return { kind: match[1] as FaultKind, times, ...(match[3] ? { route: match[3] as Route } : {}) };
}

/** Parses `--fault` specs such as `rate-limit:2`, `policy:always@generations`. */
export function parseFaults(specs: string[]): Fault[] {
  return specs.map(parseFault);
}

/** One line per kind, for `--help`. */
export function faultHelp(): string {
  return `offline backend fault, ${FAULT_SYNTAX} (TIMES default 1; ROUTE default the kind's):\n${kinds
    .map((k) => `  ${k} (@${FAULT_KINDS[k].routes.join('|')}): ${FAULT_KINDS[k].does}`)
    .join('\n')}`;
}
