/**
 * The shape of the code, kept true: no import cycle between files of src/ (type imports
 * included), the core imports nothing outside src/core, config does not import the access
 * layer (access imports config's types), and no file of the core grows past its budget.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const CORE_FILE_MAX_LINES = 360;

/** TypeScript, and the few plain-JavaScript modules the entry loads before any TypeScript. */
const isSource = (p: string): boolean => p.endsWith('.ts') || p.endsWith('.js');

function sources(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...sources(p));
    else if (isSource(p)) out.push(p);
  }
  return out;
}

/** Relative imports and re-exports of a file, resolved to absolute paths. */
export function importsOf(file: string, text: string): string[] {
  const deps: string[] = [];
  for (const m of text.matchAll(/^\s*(?:import|export)\s[^;]*?from\s+'(\.[^']+)'/gms)) deps.push(resolve(dirname(file), m[1] as string));
  for (const m of text.matchAll(/import\(\s*'(\.[^']+)'\s*\)/g)) deps.push(resolve(dirname(file), m[1] as string));
  return deps.filter(isSource);
}

/** Every cycle found by a depth-first walk (each as the list of files along it). */
export function findCycles(graph: ReadonlyMap<string, readonly string[]>): string[][] {
  const state = new Map<string, 'open' | 'done'>();
  const stack: string[] = [];
  const cycles: string[][] = [];
  const visit = (n: string): void => {
    state.set(n, 'open');
    stack.push(n);
    for (const d of graph.get(n) ?? []) {
      if (state.get(d) === 'open') cycles.push([...stack.slice(stack.indexOf(d)), d]);
      else if (!state.has(d)) visit(d);
    }
    stack.pop();
    state.set(n, 'done');
  };
  for (const n of graph.keys()) if (!state.has(n)) visit(n);
  return cycles;
}

const files = sources(join(root, 'src'));
const graph = new Map(files.map((f) => [f, importsOf(f, readFileSync(f, 'utf8'))]));
const rel = (p: string): string => relative(root, p);

describe('import graph', () => {
  it('finds a cycle when there is one (the checker itself)', () => {
    const g = new Map([['a', ['b']], ['b', ['c']], ['c', ['a']], ['d', ['a']]]);
    assert.deepEqual(findCycles(g), [['a', 'b', 'c', 'a']]);
    assert.deepEqual(importsOf('/x/a.ts', "import type { T } from './b.ts';\nexport {\n  U,\n} from '../c.ts';\n"), ['/x/b.ts', '/c.ts']);
    assert.deepEqual(importsOf('/x/a.ts', "import { f } from './b.js';\n"), ['/x/b.js']);
  });

  it('has no cycle between files of src/', () => {
    assert.deepEqual(findCycles(graph).map((c) => c.map(rel).join(' -> ')), []);
  });

  it('keeps the core free of everything outside it', () => {
    const core = join(root, 'src/core');
    const outside = [...graph].flatMap(([f, deps]) => (f.startsWith(core) ? deps.filter((d) => !d.startsWith(core)).map((d) => `${rel(f)} -> ${rel(d)}`) : []));
    assert.deepEqual(outside, []);
  });

  it('has config import nothing of the access layer', () => {
    const config = join(root, 'src/config');
    const access = join(root, 'src/access');
    const wrong = [...graph].flatMap(([f, deps]) => (f.startsWith(config) ? deps.filter((d) => d.startsWith(access)).map((d) => `${rel(f)} -> ${rel(d)}`) : []));
    assert.deepEqual(wrong, []);
  });

  it(`keeps every file of src/core under ${CORE_FILE_MAX_LINES} lines`, () => {
    const long = files.filter((f) => f.startsWith(join(root, 'src/core')))
      .map((f) => ({ file: rel(f), lines: readFileSync(f, 'utf8').split('\n').length }))
      .filter((x) => x.lines > CORE_FILE_MAX_LINES);
    assert.deepEqual(long, []);
  });
});
