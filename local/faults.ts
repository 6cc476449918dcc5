/**
 * The offline backend's faults, in one table: what each does and which calls it hits unless
 * `@ROUTE` says otherwise. `--help`, README and the parser all read it.
 */
import { UsageError } from './usage-error.ts';

export const ROUTES = ['generations', 'edits', 'chat', 'moderations', 'batches'] as const;
export type Route = (typeof ROUTES)[number];

const IMAGES: Route[] = ['generations', 'edits'];

/** `routes`: what a kind hits without `@`; `also`: where else `@ROUTE` may send it, and what it does there. */
export const FAULT_KINDS = {
  'rate-limit': { routes: IMAGES, does: '429 with retry-after: 1', also: { chat: 'a 429', moderations: 'a 429', batches: "a batch failed for the queue limit after it was created, as OpenAI's is" } },
  'server-error': { routes: IMAGES, does: 'a 500', also: { chat: 'a 500', moderations: 'a 500' } },
  hang: { routes: IMAGES, does: 'no answer: the call times out (locally after a short wait)', also: { chat: 'no answer', moderations: 'no answer' } },
  policy: { routes: IMAGES, does: 'a moderation_blocked refusal', also: {} },
  layout: { routes: ['edits'], does: 'a grid of three panels, drawn again', also: {} },
  'model-gone': { routes: IMAGES, does: 'model_not_found, as a retired model answers', also: { chat: 'model_not_found' } },
  corrupt: { routes: IMAGES, does: 'a truncated image', also: {} },
  flagged: { routes: ['moderations'], does: 'the moderation check flags the prompt', also: {} },
  impostor: { routes: ['edits'], does: "another person in a grid's second panel", also: {} },
  lookalike: { routes: ['generations'], does: 'a base of someone drawn before, in another photo', also: {} },
  'wrong-gender': { routes: ['generations'], does: 'a base of a man where a woman is asked for, and of a woman where a man is', also: {} },
  expire: { routes: ['batches'], does: 'an OpenAI batch expires half done: what it drew is kept, the rest is never drawn', also: {} },
} satisfies Record<string, { routes: Route[]; does: string; also: Partial<Record<Route, string>> }>;

export type FaultKind = keyof typeof FAULT_KINDS;

export interface Fault {
  kind: FaultKind;
  /** How many matching requests fail this way before the backend behaves; Infinity for always. */
  times: number;
  /** Which endpoint; the kind's own (FAULT_KINDS) when not given. */
  route?: Route;
  /** Only requests whose prompt holds this text (one persona's words, say); any when not given. */
  matching?: string;
}

const kinds = Object.keys(FAULT_KINDS) as FaultKind[];
export const FAULT_SYNTAX = `KIND[:TIMES|always][@${ROUTES.join('|')}][~TEXT]`;

/** Every endpoint a kind can hit, with `@`. */
export function routesOfKind(kind: FaultKind): Route[] {
  const { routes, also } = FAULT_KINDS[kind];
  return [...routes, ...(Object.keys(also) as Route[])];
}

/** Whether a fault hits this request: its endpoint, and its prompt when the fault names text. */
export function hits(fault: Fault, route: Route, prompt: string): boolean {
  return fault.times > 0 && routesOf(fault).includes(route) && (fault.matching === undefined || prompt.includes(fault.matching));
}

/** The endpoints a fault hits. */
export function routesOf(fault: Fault): readonly Route[] {
  return fault.route ? [fault.route] : FAULT_KINDS[fault.kind].routes;
}

function parseFault(spec: string): Fault {
  const match = new RegExp(`^(${kinds.join('|')})(?::(\\d+|always))?(?:@(${ROUTES.join('|')}))?(?:~(.+))?$`, 's').exec(spec);
  if (!match) throw new UsageError(`unknown fault "${spec}": use ${FAULT_SYNTAX}, KIND one of ${kinds.join(', ')}`);
  const times = match[2] === 'always' ? Infinity : Number(match[2] ?? 1);
  const kind = match[1] as FaultKind;
  const route = match[3] as Route | undefined;
  // A fault that could never fire would only hide that nothing was tried.
  if (route && !routesOfKind(kind).includes(route)) throw new UsageError(`fault "${spec}": ${kind} can hit ${routesOfKind(kind).join(', ')}, not ${route}`);
  return { kind: match[1] as FaultKind, times, ...(match[3] ? { route: match[3] as Route } : {}), ...(match[4] ? { matching: match[4] } : {}) };
}

/** Parses `--fault` specs such as `rate-limit:2`, `policy:always@generations`. */
export function parseFaults(specs: string[]): Fault[] {
  return specs.map(parseFault);
}

/** One line per kind, for `--help`. */
export function faultHelp(): string {
  return `offline backend fault, ${FAULT_SYNTAX} (TIMES default 1; ROUTE default the kind's; TEXT: only prompts holding it):\n${kinds
    .map((k) => {
      const { routes, does, also } = FAULT_KINDS[k];
      const elsewhere = Object.entries(also).map(([route, what]) => `; @${route}: ${what}`);
      return `  ${k} (@${routes.join('|')}): ${does}${elsewhere.join('')}`;
    })
    .join('\n')}`;
}

/** A fault that fired: which, where, and how many of its times it has used. */
export interface FiredFault {
  fault: Fault;
  route: Route;
  /** This firing's number, from 1; `of` is Infinity for `always`. */
  nth: number;
  of: number;
}

/** What a run prints when a fault the user asked for fires, so no fault goes unseen. */
export function describeFiredFault({ fault, route, nth, of }: FiredFault): string {
  const { does, also } = FAULT_KINDS[fault.kind] as { does: string; also: Partial<Record<Route, string>> };
  const what = (FAULT_KINDS[fault.kind].routes as Route[]).includes(route) ? does : (also[route] ?? does);
  return `⚡ fault ${fault.kind}@${route} (${nth}${of === Infinity ? '' : ` of ${of}`}): ${what}`;
}
