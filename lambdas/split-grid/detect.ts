/**
 * Finds the cells of a generated grid from its pixels.
 *
 * Image models draw grids untidily: gutters of uneven width (or none), near-white with noise,
 * outer margins, cells off-centre. We mark near-background pixels, then cut the grid the way
 * an XY-cut does: along one axis at the runs of lines that are (almost) all background, then
 * each band along the other axis, then trim every cell of what background is left on its sides.
 * Where no gutter separates two cells, the seam between two photos (the strongest jump in
 * colour across the whole band) stands in for it, and an equal split where there is none.
 */
import { GridLayoutMismatch } from '../shared/errors.ts';

export interface Box {
  left: number;
  top: number;
  width: number;
  height: number;
}

export interface RawImage {
  data: Uint8Array;
  width: number;
  height: number;
  channels: number;
}

type Axis = 'rows' | 'cols';
type Span = { start: number; end: number };

/** A pixel is background when it is bright and colourless: white gutters with noise. */
const BACKGROUND_MIN = 205;
const BACKGROUND_MAX_CHROMA = 40;
/** A line is background when this share of its pixels is: noise may speck a gutter. */
const LINE_BACKGROUND_SHARE = 0.9;
/** Panels narrower than this share of the grid are slivers of noise, not panels. */
const MIN_PANEL_SHARE = 0.12;
/** How far from its even position a cut may be and still be the cut we expect. */
const CUT_TOLERANCE = 0.2;
/** A seam must jump this many times more than the median line to count as one. */
const SEAM_STRENGTH = 4;

/** Whether one pixel is background: bright and colourless. */
function isBackground(r: number, g: number, b: number): boolean {
  if (r < BACKGROUND_MIN || g < BACKGROUND_MIN || b < BACKGROUND_MIN) return false;
  const max = r > g ? (r > b ? r : b) : g > b ? g : b;
  const min = r < g ? (r < b ? r : b) : g < b ? g : b;
  return max - min <= BACKGROUND_MAX_CHROMA;
}

/**
 * One row of the background counts: `rowSums` along the row, `colSums` down from the row above.
 * Called once per row, so the JIT optimizes it within the first grid.
 */
function countRow(data: Uint8Array, channels: number, y: number, width: number, rowSums: Uint16Array, colSums: Uint16Array): void {
  const green = channels >= 3 ? 1 : 0;
  const blue = channels >= 3 ? 2 : 0;
  const at = y * (width + 1);
  const above = y * width;
  let p = y * width * channels;
  let count = 0;
  for (let x = 0; x < width; x++, p += channels) {
    const bg = isBackground(data[p]!, data[p + green]!, data[p + blue]!) ? 1 : 0;
    count += bg;
    rowSums[at + x + 1] = count;
    colSums[above + width + x] = colSums[above + x]! + bg;
  }
}

/**
 * The counts' memory, reused from grid to grid: fresh megabytes for every grid cost more in page
 * faults than counting does. One grid is measured at a time (detection never awaits). 16 bits: a
 * count is at most a side's length, and half the memory to write is a third less counting time.
 */
let scratch = new Uint16Array(0);
const MAX_SIDE = 0xffff;

export class GridImage {
  readonly width: number;
  readonly height: number;
  readonly pixels: Uint8Array;
  readonly channels: number;
  /**
   * Background pixels counted along each row (`rowSums[y * (width + 1) + x]`: those left of x)
   * and down each column (`colSums[y * width + x]`: those above y), so the profile of any box
   * costs its height plus its width, however often the cut asks.
   */
  private readonly rowSums: Uint16Array;
  private readonly colSums: Uint16Array;

  constructor(image: RawImage) {
    const { width, height, channels } = image;
    // A plain view: the JIT compiles loops over Node's Buffer subclass less well.
    const data = new Uint8Array(image.data.buffer, image.data.byteOffset, image.data.length);
    this.width = width;
    this.height = height;
    this.pixels = data;
    this.channels = channels;
    const rowLength = (width + 1) * height;
    const colLength = width * (height + 1);
    if (scratch.length < rowLength + colLength) scratch = new Uint16Array(rowLength + colLength);
    const rowSums = scratch.subarray(0, rowLength);
    const colSums = scratch.subarray(rowLength, rowLength + colLength);
    colSums.fill(0, 0, width);
    for (let y = 0; y < height; y++) {
      rowSums[y * (width + 1)] = 0;
      countRow(data, channels, y, width, rowSums, colSums);
    }
    this.rowSums = rowSums;
    this.colSums = colSums;
  }

  /** Share of background pixels in each row and each column of `box`. */
  profiles(box: Box): { rows: Float64Array; cols: Float64Array } {
    const { rowSums, colSums, width } = this;
    const rows = new Float64Array(box.height);
    const cols = new Float64Array(box.width);
    for (let y = 0; y < box.height; y++) {
      const at = (box.top + y) * (width + 1) + box.left;
      rows[y] = (rowSums[at + box.width]! - rowSums[at]!) / box.width;
    }
    const top = box.top * width + box.left;
    const bottom = (box.top + box.height) * width + box.left;
    for (let x = 0; x < box.width; x++) cols[x] = (colSums[bottom + x]! - colSums[top + x]!) / box.height;
    return { rows, cols };
  }

  profile(box: Box, axis: Axis): Float64Array {
    return this.profiles(box)[axis];
  }

  /** Mean colour jump between each line of `box` and the line before it, along `axis`. */
  seams(box: Box, axis: Axis): Float64Array {
    const { pixels, width, channels } = this;
    const length = axis === 'rows' ? box.height : box.width;
    const jumps = new Float64Array(length);
    const step = (axis === 'rows' ? width : 1) * channels;
    for (let y = 0; y < box.height; y++) {
      const row = ((box.top + y) * width + box.left) * channels;
      for (let x = 0; x < box.width; x++) {
        const along = axis === 'rows' ? y : x;
        if (along === 0) continue;
        const p = row + x * channels;
        let jump = 0;
        for (let c = 0; c < channels; c++) jump += Math.abs(pixels[p + c]! - pixels[p + c - step]!);
        jumps[along]! += jump;
      }
    }
    const across = axis === 'rows' ? box.width : box.height;
    for (let i = 0; i < length; i++) jumps[i]! /= across;
    return jumps;
  }

  /** Shrinks `box` past every side line that is background: margins and gutter remnants. */
  trim(box: Box): Box {
    const { rows, cols } = this.profiles(box);
    const r = contentSpan(rows);
    const c = contentSpan(cols);
    if (!r || !c) return box;
    return { left: box.left + c.start, top: box.top + r.start, width: c.end - c.start, height: r.end - r.start };
  }
}

function contentSpan(profile: Float64Array): Span | undefined {
  let start = 0;
  let end = profile.length;
  while (start < end && profile[start]! >= LINE_BACKGROUND_SHARE) start++;
  while (end > start && profile[end - 1]! >= LINE_BACKGROUND_SHARE) end--;
  return end > start ? { start, end } : undefined;
}

/** Runs of background lines strictly inside the profile: candidate gutters. */
function gutterRuns(profile: Float64Array): Span[] {
  const runs: Span[] = [];
  let start = -1;
  for (let i = 0; i <= profile.length; i++) {
    const isBackground = i < profile.length && profile[i]! >= LINE_BACKGROUND_SHARE;
    if (isBackground && start < 0) start = i;
    if (!isBackground && start >= 0) {
      if (start > 0 && i < profile.length) runs.push({ start, end: i });
      start = -1;
    }
  }
  return runs;
}

type AxisSplit = { kind: 'gutters' | 'seams'; parts: Span[] } | { kind: 'mismatch'; found: number };

/** Splits a length into `parts` spans at gutters, else at seams, else evenly. */
function splitAxis(grid: GridImage, box: Box, axis: Axis, parts: number): AxisSplit {
  const length = axis === 'rows' ? box.height : box.width;
  if (parts === 1) return { kind: 'gutters', parts: [{ start: 0, end: length }] };
  const minPanel = length * MIN_PANEL_SHARE;
  // Gutters that leave a sliver on either side are stripes inside a picture, not gutters.
  const runs = gutterRuns(grid.profile(box, axis));
  const panels = runs.filter((run, i) => {
    const before = run.start - (i === 0 ? 0 : runs[i - 1]!.end);
    const after = (i === runs.length - 1 ? length : runs[i + 1]!.start) - run.end;
    return before >= minPanel && after >= minPanel;
  });
  if (panels.length > parts - 1) {
    const widths = spansBetween(panels, length);
    if (widths.every((w) => w.end - w.start >= length / (parts + 1) * 0.6)) return { kind: 'mismatch', found: panels.length + 1 };
  }
  const cuts: Span[] = [];
  for (let k = 1; k < parts; k++) {
    const expected = (length * k) / parts;
    const nearest = panels
      .filter((run) => Math.abs((run.start + run.end) / 2 - expected) <= length * CUT_TOLERANCE)
      .sort((a, b) => Math.abs((a.start + a.end) / 2 - expected) - Math.abs((b.start + b.end) / 2 - expected))[0];
    if (nearest) cuts.push(nearest);
  }
  if (cuts.length === parts - 1) return { kind: 'gutters', parts: spansBetween(cuts, length) };
  if (cuts.length > 0 || panels.length > 0) return { kind: 'mismatch', found: panels.length + 1 };
  return { kind: 'seams', parts: spansBetween(seamCuts(grid, box, axis, parts), length) };
}

/** Where no gutter separates the panels: the strongest seam near each even cut, else the cut itself. */
function seamCuts(grid: GridImage, box: Box, axis: Axis, parts: number): Span[] {
  const length = axis === 'rows' ? box.height : box.width;
  const jumps = grid.seams(box, axis);
  const sorted = Float64Array.from(jumps).sort();
  const median = sorted[Math.floor(sorted.length / 2)]! || 1;
  const cuts: Span[] = [];
  for (let k = 1; k < parts; k++) {
    const expected = Math.round((length * k) / parts);
    const reach = Math.round(length * CUT_TOLERANCE * 0.75);
    let best = expected;
    for (let i = Math.max(1, expected - reach); i < Math.min(length, expected + reach); i++) {
      if (jumps[i]! > jumps[best]!) best = i;
    }
    const at = jumps[best]! >= median * SEAM_STRENGTH ? best : expected;
    cuts.push({ start: at, end: at });
  }
  return cuts;
}

function spansBetween(cuts: Span[], length: number): Span[] {
  const spans: Span[] = [];
  let start = 0;
  for (const cut of cuts) {
    spans.push({ start, end: cut.start });
    start = cut.end;
  }
  spans.push({ start, end: length });
  return spans;
}

function sub(box: Box, axis: Axis, span: Span): Box {
  return axis === 'rows'
    ? { left: box.left, top: box.top + span.start, width: box.width, height: span.end - span.start }
    : { left: box.left + span.start, top: box.top, width: span.end - span.start, height: box.height };
}

type Cut = { cells: Box[]; byGutters: boolean } | { mismatch: string };

function cutGrid(grid: GridImage, region: Box, first: Axis, rows: number, cols: number): Cut {
  const second: Axis = first === 'rows' ? 'cols' : 'rows';
  const [firstParts, secondParts] = first === 'rows' ? [rows, cols] : [cols, rows];
  const bands = splitAxis(grid, region, first, firstParts);
  if (bands.kind === 'mismatch') return { mismatch: `${bands.found} ${first} of panels where ${firstParts} were asked for` };
  const cells: Box[][] = [];
  const kinds = new Set<string>();
  for (const span of bands.parts) {
    const band = grid.trim(sub(region, first, span));
    const split = splitAxis(grid, band, second, secondParts);
    if (split.kind === 'mismatch') return { mismatch: `${split.found} ${second} of panels in a band where ${secondParts} were asked for` };
    kinds.add(split.kind);
    cells.push(split.parts.map((part) => grid.trim(sub(band, second, part))));
  }
  // One band cut at gutters and another not: a panel spans two cells.
  if (kinds.size > 1 && secondParts > 1) return { mismatch: `a panel spans more than one cell` };
  const ordered =
    first === 'rows' ? cells.flat() : Array.from({ length: rows }, (_, r) => cells.map((column) => column[r]!));
  return { cells: ordered.flat(), byGutters: bands.kind === 'gutters' && firstParts > 1 };
}

/** Cells are roughly the size an even split would give them; anything else is not this grid. */
function checkSizes(cells: Box[], region: Box, rows: number, cols: number): string | undefined {
  const w = region.width / cols;
  const h = region.height / rows;
  const odd = cells.find((c) => c.width < w * 0.55 || c.width > w * 1.3 || c.height < h * 0.55 || c.height > h * 1.3);
  return odd ? `a cell of ${odd.width}x${odd.height} where about ${Math.round(w)}x${Math.round(h)} was expected` : undefined;
}

/**
 * The boxes of a `rows` x `cols` grid, row-major. Throws GridLayoutMismatch when the picture
 * is not such a grid (the model drew 3 or 6 panels), or, with `gutters`, when no gutter shows it is one.
 */
export function detectCells(image: RawImage, rows: number, cols: number, what = 'grid', options: { gutters?: boolean } = {}): Box[] {
  if (image.width > MAX_SIDE || image.height > MAX_SIDE) {
    throw new GridLayoutMismatch(`${what} is ${image.width}x${image.height}: no image model draws a grid with a side over ${MAX_SIDE} px`);
  }
  const grid = new GridImage(image);
  const region = grid.trim({ left: 0, top: 0, width: image.width, height: image.height });
  // Columns first only when rows first found no gutters to go by.
  const attempts = [cutGrid(grid, region, 'rows', rows, cols)];
  if (!('cells' in attempts[0]! && attempts[0].byGutters)) attempts.push(cutGrid(grid, region, 'cols', rows, cols));
  const found =
    attempts.find((a): a is Extract<Cut, { cells: Box[] }> => 'cells' in a && a.byGutters) ??
    (attempts.every((a) => 'cells' in a) ? (attempts[0] as Extract<Cut, { cells: Box[] }>) : undefined);
  const problem = found ? checkSizes(found.cells, region, rows, cols) : attempts.map((a) => ('mismatch' in a ? a.mismatch : '')).find(Boolean);
  if (!found || problem) {
    throw new GridLayoutMismatch(`${what} is not a ${rows}x${cols} grid: ${problem}`);
  }
  // An image without a line of background between any two panels may be no grid at all.
  if (options.gutters && !found.byGutters) throw new GridLayoutMismatch(`${what}: found no grid, no gutters between panels (a grid drawn without gutters is cut at its seams with --seams)`);
  return found.cells;
}

/** The seed's split: equal rectangles, no looking. Kept as the baseline the bench compares to. */
export function equalCells(width: number, height: number, rows: number, cols: number): Box[] {
  const cells: Box[] = [];
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const left = Math.round((width * c) / cols);
      const top = Math.round((height * r) / rows);
      cells.push({ left, top, width: Math.round((width * (c + 1)) / cols) - left, height: Math.round((height * (r + 1)) / rows) - top });
    }
  }
  return cells;
}
