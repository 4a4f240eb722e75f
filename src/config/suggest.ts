/**
 * "Did you mean …?" for unknown config keys: the keys the schema accepts at a path, and the
 * closest of them to a typo.
 */
import type { z } from 'zod';

interface Def {
  readonly type: string;
  readonly shape?: Record<string, z.ZodType>;
  readonly innerType?: z.ZodType;
  readonly in?: z.ZodType;
  readonly out?: z.ZodType;
  readonly options?: readonly z.ZodType[];
  readonly valueType?: z.ZodType;
  readonly element?: z.ZodType;
  readonly left?: z.ZodType;
  readonly right?: z.ZodType;
  readonly getter?: () => z.ZodType;
}

const defOf = (s: z.ZodType): Def => (s as unknown as { _zod: { def: Def } })._zod.def;

/** The object schemas `schema` may be, looking through wrappers and every union member. */
function objectsOf(schema: z.ZodType, depth = 0): z.ZodType[] {
  if (depth > 20) return [];
  const d = defOf(schema);
  switch (d.type) {
    case 'object': return [schema];
    case 'optional': case 'nullable': case 'default': case 'prefault': case 'catch': case 'readonly': case 'nonoptional':
      return d.innerType ? objectsOf(d.innerType, depth + 1) : [];
    case 'pipe': return [...(d.in ? objectsOf(d.in, depth + 1) : []), ...(d.out ? objectsOf(d.out, depth + 1) : [])];
    case 'union': return (d.options ?? []).flatMap((o) => objectsOf(o, depth + 1));
    case 'intersection': return [...(d.left ? objectsOf(d.left, depth + 1) : []), ...(d.right ? objectsOf(d.right, depth + 1) : [])];
    case 'lazy': return d.getter ? objectsOf(d.getter(), depth + 1) : [];
    default: return [];
  }
}

/** The schemas that may sit at `key` under `schema` (an object field, a record value, an array element). */
function childrenOf(schema: z.ZodType, key: PropertyKey, depth = 0): z.ZodType[] {
  if (depth > 20) return [];
  const d = defOf(schema);
  switch (d.type) {
    case 'object': {
      const child = d.shape?.[String(key)];
      return child === undefined ? [] : [child];
    }
    case 'record': return d.valueType ? [d.valueType] : [];
    case 'array': return d.element ? [d.element] : [];
    case 'optional': case 'nullable': case 'default': case 'prefault': case 'catch': case 'readonly': case 'nonoptional':
      return d.innerType ? childrenOf(d.innerType, key, depth + 1) : [];
    case 'pipe': return [...(d.in ? childrenOf(d.in, key, depth + 1) : []), ...(d.out ? childrenOf(d.out, key, depth + 1) : [])];
    case 'union': return (d.options ?? []).flatMap((o) => childrenOf(o, key, depth + 1));
    case 'intersection': return [...(d.left ? childrenOf(d.left, key, depth + 1) : []), ...(d.right ? childrenOf(d.right, key, depth + 1) : [])];
    case 'lazy': return d.getter ? childrenOf(d.getter(), key, depth + 1) : [];
    default: return [];
  }
}

/** Every key an object at `path` may have, across the union members that could be there. */
export function knownKeysAt(schema: z.ZodType, path: readonly PropertyKey[]): string[] {
  let level = [schema];
  for (const key of path) level = level.flatMap((s) => childrenOf(s, key));
  const keys = new Set<string>();
  for (const o of level.flatMap((s) => objectsOf(s))) for (const k of Object.keys(defOf(o).shape ?? {})) keys.add(k);
  return [...keys];
}

/** Edit distance where swapping two neighbours is one edit ("prot" → "port"). */
function distance(a: string, b: string): number {
  const rows = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)));
  const at = (i: number, j: number): number => rows[i]?.[j] ?? 0;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      let d = Math.min(at(i - 1, j) + 1, at(i, j - 1) + 1, at(i - 1, j - 1) + (a[i - 1] === b[j - 1] ? 0 : 1));
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d = Math.min(d, at(i - 2, j - 2) + 1);
      (rows[i] as number[])[j] = d;
    }
  }
  return at(a.length, b.length);
}

/**
 * The known key closest to `word` (case-insensitive edit distance), when it is close enough
 * to be a typo of it: at most a third of the word's length, and at least 1 or 2 edits.
 */
export function closestKey(word: string, known: readonly string[]): string | undefined {
  const w = word.toLowerCase();
  let best: { key: string; d: number } | undefined;
  for (const k of known) {
    const d = distance(w, k.toLowerCase());
    if (best === undefined || d < best.d) best = { key: k, d };
  }
  if (best === undefined) return undefined;
  const limit = Math.max(word.length <= 4 ? 1 : 2, Math.floor(word.length / 3));
  return best.d <= limit ? best.key : undefined;
}
