/**
 * What a persona says of how its person looks: a gender the face model can check (male or female
 * only), and an apparent age when a bio states one or a life stage. Where the persona says
 * nothing, nothing is asked or checked: no age is invented.
 */
import type { Persona } from './persona.ts';

export interface AgeRange {
  min: number;
  max: number;
  /** The words it came from, as the manifest shows them. */
  cue: string;
}

export interface DescribedLook {
  gender?: 'male' | 'female';
  age?: AgeRange;
}

const MALE = /^(male|man|m|boy|masculine|cis ?male|cis ?man|trans ?man)$/i;
const FEMALE = /^(female|woman|f|girl|feminine|cis ?female|cis ?woman|trans ?woman)$/i;

const DECADES: Record<string, number> = { twenties: 20, thirties: 30, forties: 40, fifties: 50, sixties: 60, seventies: 70, eighties: 80, nineties: 90 };

/** Life stages, most specific first: each an apparent age range. */
const STAGES: [RegExp, number, number][] = [
  [/\b(college|university) freshman\b|\bfreshman (at|in) (college|uni)/i, 17, 20],
  [/\b(high[- ]school(er)?|teenager|teen)\b/i, 14, 19],
  [/\b(college|university|grad|undergrad(uate)?) student\b|\bundergrad\b/i, 18, 26],
  [/\b(great-?grand(mother|father|ma|pa|parent))\b/i, 70, 90],
  [/\b(grand(mother|father|ma|pa|parent|kids|children))\b/i, 55, 85],
  [/\b(retired|retiree|pensioner)\b/i, 60, 80],
  [/\bempty[- ]nester\b/i, 45, 65],
];

/** The first age a bio states: a number of years, a decade of life, or a life stage. */
export function statedAge(text: string): AgeRange | undefined {
  const years = /\b(?:i'?m|i am|aged?|turning)\s+(\d{2})\b(?!\s*(?:%|kg|lbs?|k\b|cm|km|miles|minutes|hours|days|followers))|\b(\d{2})[- ]?(?:years?[- ]old|yo|y\/o|yrs? old)\b/i.exec(text);
  if (years) {
    const n = Number(years[1] ?? years[2]);
    if (n >= 13 && n <= 100) return { min: n - 2, max: n + 2, cue: years[0] };
  }
  const decade = /\bin (?:my|her|his|their) (?:(early|mid|late)[- ])?(twenties|thirties|forties|fifties|sixties|seventies|eighties|nineties|[2-9]0'?s)\b/i.exec(text);
  if (decade) {
    const word = decade[2]!.toLowerCase();
    const start = DECADES[word] ?? Number(word.slice(0, 2));
    const part = decade[1]?.toLowerCase();
    const [min, max] = part === 'early' ? [start, start + 4] : part === 'mid' ? [start + 3, start + 7] : part === 'late' ? [start + 6, start + 9] : [start, start + 9];
    return { min, max, cue: decade[0] };
  }
  for (const [pattern, min, max] of STAGES) {
    const stage = pattern.exec(text);
    if (stage) return { min, max, cue: stage[0] };
  }
  return undefined;
}

export function describedLook(persona: Persona): DescribedLook {
  const gender = MALE.test(persona.gender) ? 'male' : FEMALE.test(persona.gender) ? 'female' : undefined;
  const bios = [persona.bio_facebook, persona.bio_instagram, persona.bio_x, persona.bio_tiktok].filter(Boolean).join('\n');
  const age = statedAge(bios);
  return { ...(gender ? { gender } : {}), ...(age ? { age } : {}) };
}

/** What the base's checks found, in brief: what a batch report keeps per persona. */
export interface LookSummary {
  asked: { gender: 'male' | 'female' | null; age: string | null };
  /** What the face model read in the base; null when it found no face or nothing was checked. */
  read: { gender: string; confidence: number; age: number } | null;
  /** The most alike other persona when the base was registered (every earlier one, this batch's or not). */
  nearest: { personaId: string; similarity: number } | null;
  /** What each redraw was for: `lookalike`, `gender`, `age`. */
  redrawn: string[];
  /** What the published base still misses (flagged). */
  misses: string[];
}

/** The base check, as the manifest records it (check-base's BaseCheck). */
interface CheckedLook {
  face: { gender: string; genderConfidence: number; age: number } | null;
  gender: { asked: 'male' | 'female' | null; pass: boolean };
  age: { asked: AgeRange | null; pass: boolean };
  lookalike: { nearest: { personaId: string; similarity: number } | null; pass: boolean };
  redraws: { misses: string[] }[];
}

export function summarizeLook(check: CheckedLook): LookSummary {
  return {
    asked: { gender: check.gender.asked, age: check.age.asked ? `${check.age.asked.min}-${check.age.asked.max}` : null },
    read: check.face ? { gender: check.face.gender, confidence: check.face.genderConfidence, age: check.face.age } : null,
    nearest: check.lookalike.nearest ? { personaId: check.lookalike.nearest.personaId, similarity: check.lookalike.nearest.similarity } : null,
    redrawn: check.redraws.flatMap((r) => r.misses),
    misses: (['lookalike', 'gender', 'age'] as const).filter((k) => !check[k].pass),
  };
}

/** A look in one line, as `avatars run` prints it and the contact sheet shows it. */
export function lookLine(look: LookSummary): string {
  const read = look.read ? `read as ${look.read.gender} (${look.read.confidence}), looks ${look.read.age}` : 'no face read';
  const asked = [look.asked.gender, look.asked.age && `aged ${look.asked.age}`].filter(Boolean).join(', ') || 'nothing stated';
  const nearest = look.nearest ? `nearest other persona ${look.nearest.personaId} ${look.nearest.similarity}` : 'no other persona to compare';
  const redrawn = look.redrawn.length > 0 ? ` · redrawn ${look.redrawn.length}x (${look.redrawn.join(', ')})` : '';
  const flagged = look.misses.length > 0 ? ` · ⚑ published still missing: ${look.misses.join(', ')}` : '';
  return `${read}; asked ${asked}; ${nearest}${redrawn}${flagged}`;
}
