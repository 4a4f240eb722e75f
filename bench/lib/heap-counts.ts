import { getHeapSnapshot } from 'node:v8';

/**
 * Live objects by constructor (V8 heap snapshot after a GC): count and self size per
 * "type:name" (e.g. "object:Promise", "closure:onAbort"). bench/hold-heap.ts diffs two of these.
 */
export async function heapCounts(): Promise<Record<string, [number, number]>> {
  (globalThis as { gc?: () => void }).gc?.();
  const chunks: string[] = [];
  for await (const chunk of getHeapSnapshot()) chunks.push(typeof chunk === 'string' ? chunk : String(chunk));
  const snap = JSON.parse(chunks.join('')) as {
    snapshot: { meta: { node_fields: string[]; node_types: [string[]] } };
    nodes: number[]; strings: string[];
  };
  const fields = snap.snapshot.meta.node_fields;
  const types = snap.snapshot.meta.node_types[0];
  const stride = fields.length;
  const iType = fields.indexOf('type');
  const iName = fields.indexOf('name');
  const iSize = fields.indexOf('self_size');
  const out: Record<string, [number, number]> = {};
  for (let i = 0; i < snap.nodes.length; i += stride) {
    const type = types[snap.nodes[i + iType]!]!;
    // Strings and code are named by their content: group them by type alone.
    const name = type === 'object' || type === 'closure' || type === 'native' || type === 'hidden' || type === 'array'
      ? snap.strings[snap.nodes[i + iName]!]!.slice(0, 60) : '';
    const key = `${type}:${name}`;
    const e = (out[key] ??= [0, 0]);
    e[0]++;
    e[1] += snap.nodes[i + iSize]!;
  }
  return out;
}
