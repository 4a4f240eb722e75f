/**
 * The state machine drawn in docs/concepts/resource-lifecycle.md is generated from the
 * transition table: this test fails when one changes without the other.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { lifecycleEdges } from '../../src/core/lifecycle.ts';

const doc = readFileSync(new URL('../../docs/concepts/resource-lifecycle.md', import.meta.url), 'utf8');

export function lifecycleMermaid(): string {
  const lines = ['```mermaid', 'stateDiagram-v2', '    [*] --> stopped'];
  for (const e of lifecycleEdges()) lines.push(`    ${e.from} --> ${e.to}: ${e.event}`);
  lines.push('```');
  return lines.join('\n');
}

describe('resource lifecycle doc', () => {
  it('draws exactly the edges of the transition table', () => {
    const block = /<!-- lifecycle-diagram:start[^>]*-->\n([\s\S]*?)\n<!-- lifecycle-diagram:end -->/.exec(doc)?.[1];
    assert.ok(block, 'the generated block is in the doc');
    assert.equal(block, lifecycleMermaid(), 'regenerate the block from lifecycleEdges()');
  });

  it('explains every state and every event', () => {
    for (const e of lifecycleEdges()) {
      assert.match(doc, new RegExp(`^\\| \`${e.event}\` \\|`, 'm'), `event ${e.event}`);
      assert.match(doc, new RegExp(`^\\| \`${e.from}\` \\|`, 'm'), `state ${e.from}`);
    }
  });
});
