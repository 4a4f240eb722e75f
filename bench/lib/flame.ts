/**
 * Flame graphs from V8 CPU profiles (`node --cpu-prof`), drawn by hand like svg.ts (no
 * dependency, no tool to install). Several profiles go in one SVG, one above the other, at
 * one scale: a pixel is the same µs of CPU per request in every panel, so a proxy that costs
 * 1.3× as much is drawn 1.3× as wide, and the extra width is where its extra CPU goes.
 *
 * Only samples after `skipMs` count (start-up and warm-up left out), and idle samples are
 * dropped: a panel's width is busy CPU per request. Frames are merged by function and
 * location under the same parent; frames narrower than half a pixel are left out, and
 * `<title>` on each rectangle gives its name, µs per request and share of the panel.
 */
import { readFileSync } from 'node:fs';

interface ProfileNode {
  readonly id: number;
  readonly callFrame: { readonly functionName: string; readonly url: string; readonly lineNumber: number };
  readonly children?: readonly number[];
}
export interface CpuProfile {
  readonly nodes: readonly ProfileNode[];
  readonly samples: readonly number[];
  readonly timeDeltas: readonly number[];
}

export interface FlamePanel {
  readonly title: string;
  /** The .cpuprofile file. */
  readonly file: string;
  /** Samples before this many ms from the profile's start are left out. */
  readonly skipMs: number;
  /** Requests served during the counted samples: widths are µs per request. */
  readonly requests: number;
}

/** A merged call tree: total and self time in µs. */
interface Frame {
  readonly name: string;
  readonly location: string;
  totalUs: number;
  selfUs: number;
  readonly children: Map<string, Frame>;
}

/** A profile location, shortened to what reads well: `src/proxy/server.ts:310`, `node:_http_server`. */
export function shortLocation(url: string, line: number): string {
  if (url === '') return '';
  const short = url.replace(/^file:\/\/.*?\/(node_modules|src|bench)\//, '$1/');
  return line >= 0 ? `${short}:${line + 1}` : short;
}

/** The merged call tree of one profile, counting samples after `skipMs`, idle left out. */
export function callTree(prof: CpuProfile, skipMs: number): Frame {
  const byId = new Map(prof.nodes.map((n) => [n.id, n]));
  const selfUs = new Map<number, number>();
  let t = 0;
  for (let i = 0; i < prof.samples.length; i++) {
    const dt = prof.timeDeltas[i] ?? 0;
    t += dt;
    if (t < skipMs * 1000) continue;
    const id = prof.samples[i]!;
    if (byId.get(id)?.callFrame.functionName === '(idle)') continue;
    selfUs.set(id, (selfUs.get(id) ?? 0) + dt);
  }
  const root: Frame = { name: 'all', location: '', totalUs: 0, selfUs: 0, children: new Map() };
  // The first node is V8's (root); walk its subtree, merging equal frames under one parent.
  const walk = (node: ProfileNode, into: Frame): number => {
    let total = selfUs.get(node.id) ?? 0;
    into.selfUs += total;
    for (const childId of node.children ?? []) {
      const child = byId.get(childId);
      if (child === undefined) continue;
      const f = child.callFrame;
      const name = f.functionName || '(anonymous)';
      const location = shortLocation(f.url, f.lineNumber);
      const key = `${name}\u0000${location}`;
      let frame = into.children.get(key);
      if (frame === undefined) {
        frame = { name, location, totalUs: 0, selfUs: 0, children: new Map() };
        into.children.set(key, frame);
      }
      const us = walk(child, frame);
      frame.totalUs += us;
      total += us;
    }
    return total;
  };
  const first = prof.nodes[0];
  if (first !== undefined) root.totalUs = walk(first, root);
  return root;
}

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

/** Colour by what the code is: ours, undici, Node's own, V8/native. Shade varies by name. */
function colour(frame: Frame): string {
  let h = 0;
  for (let i = 0; i < frame.name.length; i++) h = (h * 31 + frame.name.charCodeAt(i)) >>> 0;
  const jitter = (h % 20) - 10;
  const loc = frame.location;
  if (loc.startsWith('src/')) return `hsl(${28 + jitter / 2}, 90%, ${58 + jitter / 2}%)`;
  if (loc.startsWith('bench/')) return `hsl(${28 + jitter / 2}, 70%, ${66 + jitter / 2}%)`;
  if (loc.startsWith('node_modules/undici')) return `hsl(${200 + jitter}, 65%, ${62 + jitter / 2}%)`;
  if (loc.startsWith('node_modules/')) return `hsl(${270 + jitter}, 50%, ${70 + jitter / 2}%)`;
  if (loc.startsWith('node:')) return `hsl(${120 + jitter}, 45%, ${62 + jitter / 2}%)`;
  return `hsl(0, 0%, ${72 + jitter / 2}%)`;
}

const ROW = 16;
const WIDTH = 1400;
const PAD = 10;
const CHAR_PX = 6.6;

/** Draws one panel (a flame graph growing upwards from y0 + height) and returns its SVG. */
function drawPanel(title: string, root: Frame, requests: number, pxPerUs: number, y0: number, depth: number): string {
  const out: string[] = [];
  const height = depth * ROW;
  const busy = root.totalUs / requests;
  out.push(`<text x="${PAD}" y="${y0 + 14}" font-size="13" font-weight="bold">${esc(title)}: ${busy.toFixed(1)} µs of busy CPU per request</text>`);
  const base = y0 + 22 + height;
  const draw = (f: Frame, x: number, level: number): void => {
    const w = f.totalUs * pxPerUs;
    if (w < 0.5) return;
    const y = base - (level + 1) * ROW;
    const perReq = f.totalUs / requests;
    const share = (f.totalUs / root.totalUs) * 100;
    const label = f.location === '' ? f.name : `${f.name} ${f.location}`;
    out.push(`<g><title>${esc(label)}: ${perReq.toFixed(2)} µs/request (${share.toFixed(1)} %), self ${(f.selfUs / requests).toFixed(2)} µs</title>`
      + `<rect x="${x.toFixed(2)}" y="${y}" width="${w.toFixed(2)}" height="${ROW - 1}" rx="2" fill="${colour(f)}"/>`);
    const fit = Math.floor((w - 6) / CHAR_PX);
    if (fit >= 3) {
      const text = `${f.name} ${perReq.toFixed(1)}`;
      out.push(`<text x="${(x + 3).toFixed(2)}" y="${y + 11.5}">${esc(text.length > fit ? `${text.slice(0, fit - 1)}…` : text)}</text>`);
    }
    out.push('</g>');
    let cx = x;
    // Widest first: the eye finds the big costs at the left of each level.
    for (const c of [...f.children.values()].sort((a, b) => b.totalUs - a.totalUs)) {
      draw(c, cx, level + 1);
      cx += c.totalUs * pxPerUs;
    }
  };
  draw(root, PAD, 0);
  return out.join('\n');
}

function depthOf(f: Frame, pxPerUs: number): number {
  let d = 0;
  for (const c of f.children.values()) if (c.totalUs * pxPerUs >= 0.5) d = Math.max(d, depthOf(c, pxPerUs));
  return d + 1;
}

/**
 * One SVG with a flame graph per panel, all at the same µs-per-pixel scale (the widest
 * panel fills the width).
 */
export function flameGraphSvg(panels: readonly FlamePanel[], heading: string): string {
  const trees = panels.map((p) => ({ p, root: callTree(JSON.parse(readFileSync(p.file, 'utf8')) as CpuProfile, p.skipMs) }));
  // Scale per request: the root of each tree is scaled by its own request count.
  const maxUsPerReq = Math.max(...trees.map(({ p, root }) => root.totalUs / p.requests));
  const parts: string[] = [];
  let y = 30;
  for (const { p, root } of trees) {
    // µs → px for this panel: its totals are over p.requests requests.
    const pxPerUs = (WIDTH - 2 * PAD) / maxUsPerReq / p.requests;
    const depth = depthOf(root, pxPerUs);
    parts.push(drawPanel(p.title, root, p.requests, pxPerUs, y, depth));
    y += 22 + depth * ROW + 24;
  }
  const legend = [['src/ (Smart Proxy)', 'hsl(28, 90%, 58%)'], ['undici', 'hsl(200, 65%, 62%)'], ['node: (Node.js)', 'hsl(120, 45%, 62%)'],
    ['other packages', 'hsl(270, 50%, 70%)'], ['V8, native, GC', 'hsl(0, 0%, 72%)']];
  const legendSvg = legend.map(([name, fill], i) => `<rect x="${PAD + i * 170}" y="${y}" width="12" height="12" fill="${fill}"/><text x="${PAD + i * 170 + 16}" y="${y + 10}">${esc(name!)}</text>`).join('');
  const height = y + 24;
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${height}" viewBox="0 0 ${WIDTH} ${height}" font-family="monospace" font-size="11">
<rect width="100%" height="100%" fill="#ffffff"/>
<text x="${PAD}" y="18" font-size="14" font-weight="bold" font-family="sans-serif">${esc(heading)}</text>
${parts.join('\n')}
${legendSvg}
</svg>
`;
}
