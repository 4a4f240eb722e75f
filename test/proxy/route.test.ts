import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isSmartProxyError } from '../../src/core/errors.ts';
import { joinUpstreamPath, parseTarget, unsafePathReason } from '../../src/proxy/route.ts';

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    return isSmartProxyError(err) ? err.code : 'not a SmartProxyError';
  }
  return undefined;
}

describe('parseTarget', () => {
  it('splits resource, groups, forwarded path and query', () => {
    const t = parseTarget('/smart_proxy/as1/g2,g1,g2/a/b%20c?x=1&y=');
    assert.equal(t.resourceId, 'as1');
    assert.deepEqual(t.groups, ['g1', 'g2'], 'sorted and unique');
    assert.equal(t.prefix, '/smart_proxy/as1/g2,g1,g2');
    assert.equal(t.path, '/a/b%20c', 'passed on as sent');
    assert.equal(t.query, '?x=1&y=');
    assert.equal(t.allGroups, false);
  });

  it('forwards `/` when nothing follows the groups, with or without a slash', () => {
    assert.equal(parseTarget('/smart_proxy/as1/g1').path, '/');
    assert.equal(parseTarget('/smart_proxy/as1/g1/').path, '/');
    assert.equal(parseTarget('/smart_proxy/as1/g1?q').query, '?q');
  });

  it('understands the "-" placeholder', () => {
    const t = parseTarget('/smart_proxy/as1/-/x');
    assert.equal(t.allGroups, true);
    assert.deepEqual(t.groups, []);
  });

  it('decodes percent-encoded ids and groups', () => {
    assert.equal(parseTarget('/smart_proxy/a%2Db/g1/').resourceId, 'a-b');
  });

  it('refuses unsafe targets with SP_ROUTE_BAD_TARGET', () => {
    for (const t of ['*', 'http://x/smart_proxy/a/g/', 'x', '', '/smart_proxy/a/g/%2E', '/smart_proxy/a/g/..%2f',
      '/smart_proxy/a/g/a%', '/smart_proxy/a/g/%0a', '/smart_proxy/a/g/a b', '/smart_proxy/a/g/x#f', '/smart_proxy/a/g,,h/x',
      `/smart_proxy/a/${Array.from({ length: 65 }, (_, i) => `g${i}`).join(',')}/`, '/smart_proxy/a%2Fb/g/']) {
      assert.equal(codeOf(() => parseTarget(t)), 'SP_ROUTE_BAD_TARGET', t);
    }
  });

  it('answers SP_ROUTE_NOT_FOUND outside the proxied space', () => {
    for (const t of ['/', '/other', '/smart_proxy', '/smart_proxy/', '/smart_proxy/as1', '/smart_proxyX/a/g/']) {
      assert.equal(codeOf(() => parseTarget(t)), 'SP_ROUTE_NOT_FOUND', t);
    }
    // Each says what is missing first.
    const detail = (t: string): string => { try { parseTarget(t); } catch (err) { return (err as Error).message; } return ''; };
    assert.match(detail('/smart_proxy/'), /needs a resource id$/);
    assert.match(detail('/smart_proxy/as1'), /needs the groups segment/);
  });

  it('finds each unsafe character or sequence alone in an otherwise plain path', () => {
    // One at a time, at the start, middle and end of the path: a quick screen for plain paths
    // must let none of them through.
    const cases: ReadonlyArray<readonly [string, string]> = [
      ['\\', 'backslash in path'], ['//', 'empty path segment ("//")'], ['#', 'fragment in target'],
      ['\u0000', 'control character or space in path'], ['\u001f', 'control character or space in path'],
      [' ', 'control character or space in path'], ['\u007f', 'control character or space in path'],
      ['/..', 'dot segment in path'], ['/.', 'dot segment in path'], ['/%2e%2E', 'dot segment in path'],
      ['%', 'malformed percent-encoding'], ['%0a', 'encoded control character'], ['%5c', 'encoded backslash'],
    ];
    for (const [piece, reason] of cases) {
      // A dot segment ("/..") is a segment of its own; the others go anywhere in one.
      const paths = piece.startsWith('/.') || piece.startsWith('/%') ? [piece, `/a${piece}/c`, `/a/b${piece}`] : [`/${piece}x`, `/a/b${piece}c`, `/a/b${piece}`];
      for (const path of paths) assert.equal(unsafePathReason(path), reason, JSON.stringify(path));
    }
    assert.equal(unsafePathReason('/smart_proxy/bench/-/hello'), undefined);
    assert.equal(unsafePathReason('/a/b-c_d~e/f;g=h/@i:j+k,l$m!n*o(p)\'q&r'), undefined);
  });

  it('accepts dots inside names (only whole dot segments are refused)', () => {
    assert.equal(unsafePathReason('/a/.well-known/x..y/...'), undefined);
  });
});

describe('joinUpstreamPath', () => {
  it('keeps the endpoint prefix, as the original VM URLs carried one', () => {
    assert.equal(joinUpstreamPath('/vm/1', '/', ''), '/vm/1');
    assert.equal(joinUpstreamPath('/vm/1', '/a', '?q=1'), '/vm/1/a?q=1');
    assert.equal(joinUpstreamPath('/vm/1/', '/a', ''), '/vm/1/a');
    assert.equal(joinUpstreamPath('', '/a', '?q'), '/a?q');
  });
});
