/**
 * Every YAML config shown in README.md and docs/ must be accepted by the config loader (what
 * `smart-proxy check-config` runs), so that a reader who copies one gets a working config.
 *
 * Most blocks are fragments: one section (`metrics:`, `admin:`), or resources naming a
 * provider `cloud` shown elsewhere. Each block is merged into a small base config (a provider
 * `cloud`, a token identity, and a public resource when the block has none) and the result
 * must parse. Blocks that are not Smart Proxy configs (Kubernetes manifests) are listed by
 * name below, so a new block is checked unless someone says why not.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { parseAllDocuments } from 'yaml';
import { ConfigError, parseConfig } from '../../src/config/load.ts';

const root = fileURLToPath(new URL('../../', import.meta.url));

/** Blocks that are not Smart Proxy configs, by `file:line` of their opening fence. */
const NOT_CONFIGS = new Map<string, string>([
  ['docs/operations/kubernetes.md:14', 'Kubernetes manifests'],
  ['docs/operations/kubernetes.md:42', 'Kubernetes manifests'],
]);

interface Block { readonly where: string; readonly text: string }

function markdownFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const path = join(dir, e.name);
    return e.isDirectory() ? markdownFiles(path) : e.name.endsWith('.md') ? [path] : [];
  });
}

function yamlBlocks(): Block[] {
  const blocks: Block[] = [];
  for (const path of [join(root, 'README.md'), ...markdownFiles(join(root, 'docs'))]) {
    const lines = readFileSync(path, 'utf8').split('\n');
    let start = -1;
    lines.forEach((line, i) => {
      if (start === -1 && /^\s*```ya?ml\s*$/.test(line)) start = i;
      else if (start !== -1 && /^\s*```\s*$/.test(line)) {
        blocks.push({ where: `${relative(root, path)}:${start + 1}`, text: lines.slice(start + 1, i).join('\n') });
        start = -1;
      }
    });
  }
  return blocks;
}

const base = {
  providers: { cloud: { kind: 'atmosphere', baseUrl: 'embedded' } },
  identities: [{ kind: 'token', tokens: [{ user: 'ann', groups: ['g1'], hash: `sha256:${'0'.repeat(64)}` }] }],
};

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** `over` merged into `under`: mappings key by key, anything else replaced. */
function merge(under: unknown, over: unknown): unknown {
  if (!isPlainObject(under) || !isPlainObject(over)) return over;
  const out: Record<string, unknown> = { ...under };
  for (const [k, v] of Object.entries(over)) out[k] = merge(under[k], v);
  return out;
}

describe('YAML configs in the docs', () => {
  const blocks = yamlBlocks();

  it('finds the blocks (and every exemption still names one)', () => {
    assert.ok(blocks.length >= 20, `only ${blocks.length} YAML blocks found`);
    const where = new Set(blocks.map((b) => b.where));
    for (const key of NOT_CONFIGS.keys()) assert.ok(where.has(key), `${key} is exempted but is no YAML block (moved? update NOT_CONFIGS)`);
  });

  for (const block of blocks) {
    if (NOT_CONFIGS.has(block.where)) continue;
    it(`${block.where} is a valid config (merged into a base)`, () => {
      const docs = parseAllDocuments(block.text);
      assert.ok(!Array.isArray(docs) || docs.length === 1, 'one YAML document');
      const doc = Array.isArray(docs) ? docs[0]! : docs;
      assert.deepEqual(doc.errors.map((e) => e.message), [], 'YAML syntax');
      const fragment: unknown = doc.toJS();
      assert.ok(isPlainObject(fragment), 'a mapping at the top');
      const merged = merge(base, fragment) as Record<string, unknown>;
      if (!isPlainObject(merged.resources) || Object.keys(merged.resources).length === 0) {
        merged.resources = { demo: { provider: 'cloud', access: { public: true } } };
      }
      try {
        parseConfig(JSON.stringify(merged), block.where);
      } catch (err) {
        if (err instanceof ConfigError) assert.fail(`${block.where}:\n  ${err.problems.join('\n  ')}\n--- block ---\n${block.text}`);
        throw err;
      }
    });
  }
});
