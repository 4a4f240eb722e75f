import assert from 'node:assert/strict';
import { it } from 'node:test';
import { parseConfig } from '../../src/config/load.ts';

void it('a key given twice in one mapping is refused with its line', () => {
  const text = 'resources:\n  a: { provider: { kind: static, endpoint: "http://127.0.0.1:1" } }\n  a: { provider: { kind: static, endpoint: "http://127.0.0.1:2" } }\n';
  assert.throws(() => parseConfig(text, 'x.yaml'), /x\.yaml[\s\S]*line 3, column 3: Map keys must be unique \("a" appears twice\)/);
});

void it('the same key in different mappings is fine', () => {
  const cfg = parseConfig('resourceDefaults: { access: { public: true } }\nresources:\n  a: { provider: { kind: static, endpoint: "http://127.0.0.1:1" } }\n  b: { provider: { kind: static, endpoint: "http://127.0.0.1:1" } }\n');
  assert.deepEqual(Object.keys(cfg.resources), ['a', 'b']);
});
