/**
 * The plain-YAML fast path answers exactly what the `yaml` library answers, or gives up: on
 * generated documents in every style `yaml.stringify` writes, on those documents with tricky
 * characters inserted at random, and on hand-picked edge cases. A text `yaml` refuses (an
 * error or a duplicate key) is never answered by the fast path, so errors still come from the
 * full parse with their line and column.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { parseDocument, stringify } from 'yaml';
import { parseConfig } from '../../src/config/load.ts';
import { parsePlainYaml } from '../../src/config/plain-yaml.ts';

/** What the full parser makes of a text: its data, or 'refused'. */
function reference(text: string): unknown {
  const doc = parseDocument(text, { uniqueKeys: true });
  if (doc.errors.length > 0) return 'refused';
  return doc.toJS({ maxAliasCount: 100 }) as unknown;
}

/** The property: the fast path agrees with the full parse or gives up. Returns whether it answered. */
function agrees(text: string): boolean {
  const fast = parsePlainYaml(text);
  if (fast === undefined) return false;
  assert.deepStrictEqual(fast, reference(text), `fast path differs on:\n${text}`);
  return true;
}

const keyArb = fc.oneof(
  fc.constantFrom('a', 'r1', 'kind', 'endpoint', 'x-y', 'a.b', 'a/b', '_k', 'null', 'true', '1', '0x1', '1e3', 'a b', 'a:b', '#c', '-a', 'é', "it's", 'say "hi"', '', '__proto__', '~'),
  fc.stringMatching(/^[a-z][a-z0-9_-]{0,8}$/),
);
const scalarArb = fc.oneof(
  fc.constantFrom('', ' ', 'null', 'Null', '~', 'true', 'False', 'yes', 'no', 'on', '1', '-0', '+1', '007', '0o17', '0x1F', '1e3', '.5', '1.', '.inf', '-.Inf', '.nan', '1_000', '30s', 'a: b', 'a:b', 'a #b', 'a#b', '#a', '- a', '-a', '-', '? a', ': a', '[a]', '{a}', 'a, b', '&a', '*a', '!a', '|', '>', '%a', '@a', '`a', "'", '"', "it's", 'a\\b', 'http://127.0.0.1:9', 'a  b', ' a', 'a ', '\t', 'a\nb', 'é ü', '\u2028', '\u00a0', '\u3000'),
  fc.string({ maxLength: 12 }),
  fc.integer(),
  fc.double(),
  fc.boolean(),
  fc.constant(null),
);
const { tree } = fc.letrec((tie) => ({
  tree: fc.oneof({ depthSize: 'small', withCrossShrink: true }, scalarArb, tie('map'), tie('seq')),
  map: fc.dictionary(keyArb, tie('tree'), { maxKeys: 4 }),
  seq: fc.array(tie('tree'), { maxLength: 4 }),
}));
const optionsArb = fc.record({
  indent: fc.constantFrom(2, 3, 4),
  indentSeq: fc.boolean(),
  collectionStyle: fc.constantFrom('any' as const, 'block' as const, 'flow' as const),
  defaultStringType: fc.constantFrom('PLAIN' as const, 'QUOTE_DOUBLE' as const, 'QUOTE_SINGLE' as const),
  defaultKeyType: fc.constantFrom(null, 'PLAIN' as const, 'QUOTE_DOUBLE' as const),
  flowCollectionPadding: fc.boolean(),
});
const docArb = fc.tuple(fc.dictionary(keyArb, tree, { minKeys: 1, maxKeys: 5 }), optionsArb).map(([data, options]) => stringify(data, options));

/** Config-like data only: plain keys, word-like strings, integers, booleans; one line per scalar. */
const plainKeyArb = fc.stringMatching(/^[a-z][a-zA-Z0-9_.-]{0,8}$/).filter((k) => typeof parseDocument(k).toJS() === 'string');
const plainScalarArb = fc.oneof(fc.stringMatching(/^[a-z][a-zA-Z0-9 _./:-]{0,15}[a-z0-9]$/).filter((s) => !/: | #/.test(s)), fc.integer(), fc.boolean(), fc.constant(null));
const { plainTree } = fc.letrec((tie) => ({
  plainTree: fc.oneof({ depthSize: 'small' }, plainScalarArb, tie('map'), tie('seq')),
  map: fc.dictionary(plainKeyArb, tie('plainTree'), { maxKeys: 4 }),
  seq: fc.array(tie('plainTree'), { maxLength: 4 }),
}));
const plainDocArb = fc.tuple(fc.dictionary(plainKeyArb, plainTree, { minKeys: 1, maxKeys: 5 }), optionsArb)
  .map(([data, options]) => stringify(data, { ...options, lineWidth: 0, defaultKeyType: null, defaultStringType: options.defaultStringType === 'QUOTE_DOUBLE' ? 'QUOTE_DOUBLE' : 'PLAIN' }))
  // Not a shape people write: an empty collection alone on the line after its key (the fast path gives up).
  .filter((text) => !/:\n *(?:\[\]|\{\})$/m.test(text));

void describe('plain YAML fast path', () => {
  void it('agrees with yaml on generated documents', () => {
    let answered = 0;
    fc.assert(fc.property(docArb, (text) => {
      if (agrees(text)) answered++;
    }), { numRuns: 1500 });
    // Not all give-ups: the tricky scalars are in only some documents.
    assert.ok(answered > 150, `answered only ${answered} of 1500`);
  });

  void it('answers every config-like document, in every style yaml writes', () => {
    fc.assert(fc.property(plainDocArb, (text) => {
      assert.ok(agrees(text), `gave up on:\n${text}`);
    }), { numRuns: 1000 });
  });

  void it('agrees with yaml (or gives up) when tricky characters are inserted anywhere', () => {
    const snippet = fc.constantFrom(' ', '  ', '\n', '\n  ', '\n- ', ':', ': ', ' #', '#', '-', '- ', '"', "'", '{', '}', '[', ']', ',', '&a ', '*a', '!', '|', '>', '?', '\t', '\r', '---\n', '\\', 'a: 1\n', 'a: 1\na: 2\n', '\u00a0');
    fc.assert(fc.property(docArb, fc.array(fc.tuple(fc.nat(), snippet), { minLength: 1, maxLength: 3 }), (text, edits) => {
      let t = text;
      for (const [at, s] of edits) {
        const i = at % (t.length + 1);
        t = t.slice(0, i) + s + t.slice(i);
      }
      agrees(t);
    }), { numRuns: 3000 });
  });

  void it('agrees with yaml (or gives up) when lines are re-indented, repeated, swapped, joined or dropped', () => {
    const edit = fc.tuple(fc.nat(), fc.constantFrom('indent+1', 'indent+2', 'indent-1', 'dup', 'swap', 'del', 'join', 'comment', 'dash'));
    fc.assert(fc.property(plainDocArb, fc.array(edit, { minLength: 1, maxLength: 3 }), (text, edits) => {
      const lines = text.split('\n');
      for (const [n, e] of edits) {
        if (lines.length === 0) break;
        const i = n % lines.length;
        const l = lines[i]!;
        const next = lines[i + 1];
        if (e === 'indent+1') lines[i] = ` ${l}`;
        else if (e === 'indent+2') lines[i] = `  ${l}`;
        else if (e === 'indent-1') lines[i] = l.startsWith(' ') ? l.slice(1) : l;
        else if (e === 'dup') lines.splice(i, 0, l);
        else if (e === 'swap' && next !== undefined) lines.splice(i, 2, next, l);
        else if (e === 'del') lines.splice(i, 1);
        else if (e === 'join' && next !== undefined) lines.splice(i, 2, `${l} ${next.trim()}`);
        else if (e === 'comment') lines.splice(i, 0, `${' '.repeat(n % 7)}# c`);
        else if (e === 'dash') lines[i] = l.replace(/^( *)/, '$1- ');
      }
      agrees(lines.join('\n'));
    }), { numRuns: 2000 });
  });

  void it('answers the shapes configs are written in, exactly', () => {
    const text = [
      '# a comment',
      'listen: { host: 127.0.0.1, port: 8080 }   # trailing',
      'log: {level: warn}',
      'empty:',
      'list:',
      '- a',
      '- "b c"',
      "- 'it''s'",
      '-',
      '- k: v',
      '  k2: [1, 2.5, .inf, 0x1F, 0o17, ~, true, "x"]',
      '- - nested',
      'resources:',
      '  r1:',
      '    provider:',
      '      kind: static',
      '      endpoint: "http://127.0.0.1:9"',
      '    groups:',
      '      - staff',
      '      - a#b',
      '    note: a, b [c] {d}',
      '    url: http://x:1/y',
      '    n: -12',
      '    e: {}',
      '    s: []',
      '',
    ].join('\n');
    assert.deepStrictEqual(parsePlainYaml(text), reference(text));
    assert.deepEqual(parsePlainYaml(text), {
      listen: { host: '127.0.0.1', port: 8080 }, log: { level: 'warn' }, empty: null,
      list: ['a', 'b c', "it's", null, { k: 'v', k2: [1, 2.5, Infinity, 31, 15, null, true, 'x'] }, ['nested']],
      resources: { r1: { provider: { kind: 'static', endpoint: 'http://127.0.0.1:9' }, groups: ['staff', 'a#b'], note: 'a, b [c] {d}', url: 'http://x:1/y', n: -12, e: {}, s: [] } },
    });
  });

  void it('gives up on what it does not read, and on anything yaml refuses', () => {
    for (const text of [
      'a: &x 1\nb: *x\n', 'a: !!str 1\n', 'a: |\n  x\n', 'a: >-\n  x\n', 'a: one\n  two\n', 'a: "x\\ny"\n', 'a: "x\n  y"\n',
      'a: {b: 1,\n  c: 2}\n', '---\na: 1\n', '%YAML 1.2\n---\na: 1\n', 'a:\tb\n', 'a: b\r\n', '\ufeffa: 1\n', '? a\n: b\n',
      '1: a\n', 'true: a\n', 'a b: c\n', '"a": 1\n"a": 2\n', 'a: 1\na: 2\n', 'a: {b: 1, b: 2}\n', '__proto__: 1\n', 'a: b: c\n',
      'a:\n  b: 1\n c: 2\n', 'a:\n    b: 1\n  c: 2\n', '- a\n- b\n', 'a\n', '', '# only\n', 'a: [1, 2\n', 'a: "b" c\n', '  a: 1\n',
    ]) {
      assert.equal(parsePlainYaml(text), undefined, JSON.stringify(text));
    }
  });

  void it('parseConfig gives the same config and the same errors through the fast path', () => {
    const lines = ['listen: { host: 127.0.0.1, port: 0 }', 'state: { kind: memory }', 'resourceDefaults: { access: { public: true } }', 'resources:'];
    for (let i = 1; i <= 50; i++) lines.push(`  r${i}:`, '    provider:', '      kind: static', `      endpoint: "http://127.0.0.1:${9000 + i}"`);
    const text = `${lines.join('\n')}\n`;
    assert.notEqual(parsePlainYaml(text), undefined);
    // The same text made unreadable for the fast path (an anchor) must give the same config.
    const config = parseConfig(text);
    assert.deepEqual(parseConfig(text.replace('resources:', 'resources: &all')), config);
    // An invalid value: the message (with its line) comes from the full parse either way.
    const bad = text.replace('endpoint: "http://127.0.0.1:9007"', 'endpoint: 12');
    assert.notEqual(parsePlainYaml(bad), undefined);
    const message = (t: string): string => { try { parseConfig(t, 'x.yaml'); } catch (err) { return (err as Error).message; } return 'accepted'; };
    assert.match(message(bad), /line 31: resources\.r7\.provider/);
    assert.equal(message(bad), message(bad.replace('resources:', 'resources: &all')));
    assert.match(message(text.replace('  r3:', '  r2:')), /line 13, column 3: Map keys must be unique \("r2" appears twice\)/);
  });
});

describe('hostile nesting', () => {
  it('gives up on nesting deeper than any config (flow or block) instead of overflowing the stack; the full parse then refuses with a line', () => {
    const n = 50_000;
    const flow = `resources: ${'['.repeat(n)}${']'.repeat(n)}\n`;
    const block = `resources:\n${Array.from({ length: 5_000 }, (_, i) => `${' '.repeat(i + 1)}k${i}:\n`).join('')}${' '.repeat(5_001)}x: 1\n`;
    for (const text of [flow, block]) {
      assert.equal(parsePlainYaml(text), undefined);
      assert.throws(() => parseConfig(text, 'deep.yaml'), /deep\.yaml:\n {2}- line \d+/);
    }
    // Nesting a config may really have is still read by the fast path.
    const ok = `a: ${'['.repeat(30)}1${']'.repeat(30)}\nb:\n${Array.from({ length: 30 }, (_, i) => `${' '.repeat(i + 1)}k${i}:\n`).join('')}${' '.repeat(31)}x: 1\n`;
    assert.ok(agrees(ok));
  });
});
