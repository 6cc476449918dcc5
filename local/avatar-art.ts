/**
 * Drawing for the offline image backend: a stylized avatar per persona, wearing the face of one
 * of the portraits in local/faces/ so the identity and base checks find a real person, and,
 * for edits, a grid of variations of it laid out as image models lay theirs out (uneven white
 * gutters with noise, margins, cells a little off-centre), so the real splitter has real work to do.
 */
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import sharp, { type Sharp } from 'sharp';

/**
 * The portraits, where each face is in it (hair to chin), who it shows, and what the face model
 * reads in a drawing of it (measured: gender and its confidence, apparent age). Drawings of two
 * photos of one person score 0.64-0.70 to each other, of different people at most 0.52.
 */
const FACES = {
  astronaut: { file: 'astronaut.png', left: 129, top: 5, width: 190, height: 232, person: 'Eileen Collins', gender: 'female', age: 29 },
  // Read as a man (0.83-0.86): drawn only as an impostor, never for a persona.
  grace: { file: 'grace_hopper.jpg', left: 96, top: 31, width: 330, height: 400, person: 'Grace Hopper', gender: 'female', age: 69 },
  rose1: { file: 'rose1.jpg', left: 0, top: 0, width: 320, height: 263, person: 'Rose Leslie', gender: 'female', age: 31 },
  rose2: { file: 'rose2.jpg', left: 0, top: 0, width: 320, height: 323, person: 'Rose Leslie', gender: 'female', age: 31 },
  obama1: { file: 'obama1.jpg', left: 0, top: 0, width: 320, height: 325, person: 'Barack Obama', gender: 'male', age: 35 },
  obama2: { file: 'obama2.jpg', left: 0, top: 0, width: 320, height: 418, person: 'Barack Obama', gender: 'male', age: 35 },
  obama3: { file: 'obama3.jpg', left: 0, top: 0, width: 320, height: 356, person: 'Barack Obama', gender: 'male', age: 39 },
  biden2: { file: 'biden2.jpg', left: 0, top: 0, width: 320, height: 342, person: 'Joe Biden', gender: 'male', age: 59 },
  lin1: { file: 'lin1.jpg', left: 0, top: 0, width: 320, height: 325, person: 'Lin-Manuel Miranda', gender: 'male', age: 26 },
  alex1: { file: 'alex1.jpg', left: 0, top: 0, width: 320, height: 326, person: 'Alex Lacamoire', gender: 'male', age: 33 },
} as const;

/** Whom the backend draws for personas, by gender, in this order: one photo of each person. */
const CAST: Record<'female' | 'male', FaceName[]> = { female: ['rose1', 'astronaut'], male: ['obama1', 'biden2', 'lin1', 'alex1'] };
/** Other photos of people of the cast: what a look-alike shows. */
const OTHER_PHOTOS: Partial<Record<FaceName, FaceName[]>> = { rose1: ['rose2'], obama1: ['obama2', 'obama3'] };

export interface Casting {
  /** The person a base prompt is drawn as (see casting). */
  faceFor(prompt: string, twist?: 'lookalike' | 'wrong-gender'): FaceName;
}

/**
 * A cast for one backend. Like an image model, it draws people of the gender and near the age a
 * prompt asks, a new one each time while it knows one more (it knows six: two women, four men, in
 * the cast's order), then faces it drew before. Told to, it draws another photo of someone of the
 * cast (the latest it drew that has one, else the first of the gender asked: whom a fresh
 * backend draws first, so across processes too), or someone of the other gender. Neither counts
 * as drawn: a base the checks refuse takes no one from the cast.
 */
export function casting(): Casting {
  const drawn: FaceName[] = [];
  return {
    faceFor(prompt, twist) {
      const asked = /\b(female|woman|girl)\b/i.test(prompt) ? 'female' : /\b(male|man|boy)\b/i.test(prompt) ? 'male' : undefined;
      if (twist === 'lookalike') {
        const ofGender = (f: FaceName) => !asked || FACES[f].gender === asked;
        const person = [...drawn].reverse().find((f) => OTHER_PHOTOS[f] && ofGender(f)) ?? (Object.keys(OTHER_PHOTOS) as FaceName[]).find(ofGender)!;
        const photos = OTHER_PHOTOS[person]!;
        return photos[drawn.filter((f) => f === person).length % photos.length]!;
      }
      const [min, max] = (/Apparent age (\d+) to (\d+)/.exec(prompt)?.slice(1).map(Number) ?? [0, 200]) as [number, number];
      const gender = twist === 'wrong-gender' ? (asked === 'male' ? 'female' : 'male') : asked;
      const pool = gender ? CAST[gender] : [...CAST.female, ...CAST.male];
      const off = (f: FaceName) => Math.max(0, min - FACES[f].age, FACES[f].age - max);
      const order = [...pool].sort((a, b) => off(a) - off(b));
      // The other gender's last: whom the cast would draw for a persona of that gender latest.
      if (twist) order.reverse();
      const face = order.find((f) => !drawn.includes(f)) ?? order[0]!;
      if (!twist) drawn.push(face);
      return face;
    },
  };
}

export type FaceName = keyof typeof FACES;

export interface AvatarLook {
  skin: string;
  hair: string;
  shirt: string;
  background: string;
  hairStyle: number;
  glasses: boolean;
  face: FaceName;
}

const SKINS = ['#f1c7a5', '#e0ac69', '#c68642', '#8d5524', '#ffdbac', '#a86b4c'];
const HAIRS = ['#2c1b10', '#4a2f1b', '#b5651d', '#e6c27a', '#1c1c1c', '#7a7a7a', '#8e2b1f'];
const SHIRTS = ['#1f6feb', '#d1495b', '#2a9d8f', '#6a4c93', '#f4a261', '#264653', '#e76f51'];
/** Backgrounds stay saturated: white belongs to the gutters. */
const BACKGROUNDS = ['#3d5a80', '#81b29a', '#e07a5f', '#6d597a', '#355070', '#b56576', '#2a9d8f', '#8d99ae'];

export function seedOf(text: string): Buffer {
  return createHash('sha256').update(text).digest();
}

export function lookFor(text: string): AvatarLook {
  const h = seedOf(text);
  return {
    skin: SKINS[h[0]! % SKINS.length]!,
    hair: HAIRS[h[1]! % HAIRS.length]!,
    shirt: SHIRTS[h[2]! % SHIRTS.length]!,
    background: BACKGROUNDS[h[3]! % BACKGROUNDS.length]!,
    hairStyle: h[4]! % 3,
    glasses: h[5]! % 3 === 0,
    face: h[6]! % 2 === 0 ? 'astronaut' : 'grace',
  };
}

/** One avatar as SVG; `variation` changes scene, pose and light but never the person. */
export function avatarSvg(look: AvatarLook, width: number, height: number, variation = -1): string {
  const background = variation < 0 ? look.background : BACKGROUNDS[(BACKGROUNDS.indexOf(look.background) + 1 + variation) % BACKGROUNDS.length]!;
  const tilt = variation < 0 ? 0 : [-8, 6, -3, 10][variation % 4]!;
  const scale = Math.min(width, height) / 1024;
  const cx = width / 2 + (variation < 0 ? 0 : [-60, 50, 0, 30][variation % 4]! * scale);
  const cy = height / 2;
  const hair = [
    `<ellipse cx="0" cy="-95" rx="175" ry="120" fill="${look.hair}"/>`,
    `<path d="M-180,-40 Q-190,-230 0,-235 Q190,-230 180,-40 L150,-90 Q0,-160 -150,-90 Z" fill="${look.hair}"/>`,
    `<path d="M-185,60 Q-200,-240 0,-240 Q200,-240 185,60 L150,-60 Q0,-150 -150,-60 Z" fill="${look.hair}"/>`,
  ][look.hairStyle];
  const glasses = look.glasses
    ? `<g stroke="#222" stroke-width="8" fill="none"><circle cx="-60" cy="-10" r="38"/><circle cx="60" cy="-10" r="38"/><path d="M-22,-10 H22"/></g>`
    : '';
  const sun = variation >= 0 ? `<circle cx="${width * 0.82}" cy="${height * 0.18}" r="${70 * scale}" fill="#ffd166" opacity="0.85"/>` : '';
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}">
  <defs><linearGradient id="bg" x1="0" y1="0" x2="0" y2="1"><stop offset="0" stop-color="${background}"/><stop offset="1" stop-color="#1d1d2b"/></linearGradient></defs>
  <rect width="${width}" height="${height}" fill="url(#bg)"/>
  ${sun}
  <g transform="translate(${cx},${cy}) scale(${scale}) rotate(${tilt})">
    <path d="M-330,520 Q-320,250 0,230 Q320,250 330,520 Z" fill="${look.shirt}"/>
    <rect x="-60" y="130" width="120" height="120" fill="${look.skin}"/>
    ${hair}
    <ellipse cx="0" cy="0" rx="160" ry="195" fill="${look.skin}"/>
    <circle cx="-60" cy="-10" r="16" fill="#1b1b1b"/><circle cx="60" cy="-10" r="16" fill="#1b1b1b"/>
    <path d="M-60,85 Q0,${variation === 2 ? 110 : 130} 60,85" stroke="#7b2e2e" stroke-width="12" fill="none" stroke-linecap="round"/>
    ${glasses}
  </g>
</svg>`;
}

/** Another person: what an impostor panel shows. */
export function otherFace(face: FaceName): FaceName {
  return face === 'grace' ? 'astronaut' : 'grace';
}

function varied(photo: Sharp, variation: number): Sharp {
  if (variation % 4 === 1) return photo.flop();
  if (variation % 4 === 3) return photo.modulate({ hue: 25, brightness: 0.9 });
  return photo;
}

/**
 * Four photographs, the two portraits in turn, each varied as the face of a drawing is: the cells
 * of a photographic grid.
 */
export function portraits(): Promise<Buffer[]> {
  const names = Object.keys(FACES) as FaceName[];
  return Promise.all([0, 1, 2, 3].map((v) => varied(sharp(join(import.meta.dirname, 'faces', FACES[names[v % names.length]!].file)), v).png().toBuffer()));
}

/**
 * The face for the head of a drawing, an oval `width` x `height`. Variations shift, flip and tint
 * it, as photos of one person differ; the person stays.
 */
async function faceOval(face: FaceName, width: number, height: number, variation: number): Promise<Buffer> {
  const { file, left, top, width: w, height: h } = FACES[face];
  const region = { left, top, width: w, height: h };
  const photo = varied(sharp(join(import.meta.dirname, 'faces', file)).extract(region).resize(width, height, { fit: 'cover' }), variation);
  const oval = Buffer.from(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}"><ellipse cx="${width / 2}" cy="${height / 2}" rx="${width / 2}" ry="${height / 2}"/></svg>`);
  return photo.composite([{ input: oval, blend: 'dest-in' }]).png().toBuffer();
}

export async function drawAvatar(look: AvatarLook, width: number, height: number, variation = -1, face: FaceName = look.face): Promise<Buffer> {
  // The head of avatarSvg: its centre and radii, at this size and variation.
  const scale = Math.min(width, height) / 1024;
  const cx = width / 2 + (variation < 0 ? 0 : [-60, 50, 0, 30][variation % 4]! * scale);
  const [rx, ry] = [Math.round(160 * scale), Math.round(195 * scale)];
  const head = await faceOval(face, 2 * rx, 2 * ry, Math.max(variation, 0));
  return sharp(Buffer.from(avatarSvg(look, width, height, variation)))
    .composite([{ input: head, left: Math.round(cx - rx), top: Math.round(height / 2 - ry) }])
    .png()
    .toBuffer();
}

/** A deterministic pseudo-random stream from a seed, for layout and noise. */
export function random(seed: Buffer): () => number {
  let state = seed.readUInt32LE(0) || 1;
  return () => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return (state >>> 0) / 0x1_0000_0000;
  };
}

export interface Cell {
  left: number;
  top: number;
  width: number;
  height: number;
}

/** Cell boxes for a rows x cols grid with uneven gutters, margins and off-centre cells. */
export function gridLayout(width: number, height: number, rows: number, cols: number, rnd: () => number, maxGutter = 40): Cell[] {
  const margin = () => Math.floor(rnd() * 24);
  const [left, right, top, bottom] = [margin(), margin(), margin(), margin()];
  const gutterX = Array.from({ length: cols - 1 }, () => Math.floor(rnd() * maxGutter));
  const gutterY = Array.from({ length: rows - 1 }, () => Math.floor(rnd() * maxGutter));
  const innerW = width - left - right - gutterX.reduce((a, b) => a + b, 0);
  const innerH = height - top - bottom - gutterY.reduce((a, b) => a + b, 0);
  // Off-centre: each boundary moves up to 7 % of a cell.
  const cuts = (inner: number, parts: number) =>
    Array.from({ length: parts + 1 }, (_, i) => (i === 0 || i === parts ? (inner * i) / parts : (inner * i) / parts + (rnd() - 0.5) * 0.14 * (inner / parts))).map(Math.round);
  const xs = cuts(innerW, cols);
  const ys = cuts(innerH, rows);
  const cells: Cell[] = [];
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const gx = gutterX.slice(0, c).reduce((a, b) => a + b, 0);
      const gy = gutterY.slice(0, r).reduce((a, b) => a + b, 0);
      cells.push({ left: left + gx + xs[c]!, top: top + gy + ys[r]!, width: xs[c + 1]! - xs[c]!, height: ys[r + 1]! - ys[r]! });
    }
  }
  return cells;
}

/** Near-white canvas with noise, the way generated gutters look. */
export function noisyWhite(width: number, height: number, rnd: () => number): Buffer {
  const data = Buffer.alloc(width * height * 3);
  for (let i = 0; i < data.length; i++) data[i] = 255 - Math.floor(rnd() * 22);
  return data;
}

/** Composes cell images onto a noisy white canvas at the given boxes. */
export async function composeGrid(width: number, height: number, cells: Cell[], images: Buffer[], rnd: () => number): Promise<Buffer> {
  const resized = await Promise.all(cells.map((cell, i) => sharp(images[i % images.length]!).resize(cell.width, cell.height, { fit: 'cover' }).toBuffer()));
  return sharp(noisyWhite(width, height, rnd), { raw: { width, height, channels: 3 } })
    .composite(resized.map((input, i) => ({ input, left: cells[i]!.left, top: cells[i]!.top })))
    .png()
    .toBuffer();
}
