import assert from 'node:assert/strict';
import type { IncomingMessage } from 'node:http';
import { describe, it } from 'node:test';
import { isBrowserNavigation, parsePrefer, planWait } from '../../src/proxy/prefer.ts';

const req = (method: string, headers: Record<string, string | string[]>): IncomingMessage =>
  ({ method, headers }) as unknown as IncomingMessage;

describe('parsePrefer (RFC 7240 §2)', () => {
  it('reads wait and respond-async, names case-insensitively, across several fields', () => {
    assert.deepEqual(parsePrefer('wait=10'), { waitS: 10, respondAsync: false });
    assert.deepEqual(parsePrefer('Respond-Async'), { waitS: undefined, respondAsync: true });
    assert.deepEqual(parsePrefer('respond-async, WAIT = 3'), { waitS: 3, respondAsync: true });
    assert.deepEqual(parsePrefer(['handling=lenient', 'wait=7;foo=bar']), { waitS: 7, respondAsync: false });
  });

  it('keeps only the first of a repeated preference', () => {
    assert.equal(parsePrefer('wait=2, wait=100').waitS, 2);
    assert.equal(parsePrefer(['wait=5', 'wait=1']).waitS, 5);
    // An invalid first occurrence still shadows a later valid one (§2: only the first counts).
    assert.equal(parsePrefer('wait=soon, wait=4').waitS, undefined);
  });

  it('ignores malformed members and unknown preferences without failing', () => {
    assert.deepEqual(parsePrefer(undefined), { waitS: undefined, respondAsync: false });
    assert.deepEqual(parsePrefer(''), { waitS: undefined, respondAsync: false });
    assert.deepEqual(parsePrefer(',,; =, return=minimal'), { waitS: undefined, respondAsync: false });
    for (const bad of ['wait=-1', 'wait=1.5', 'wait=', 'wait', 'wait=1e3', 'wait=0x10']) {
      assert.equal(parsePrefer(bad).waitS, undefined, bad);
    }
    assert.equal(parsePrefer('wait=99999999999999999999').waitS, 2_147_483_648);
  });

  it('does not split inside quoted strings', () => {
    assert.deepEqual(parsePrefer('foo="a, wait=1; respond-async", wait="3"'), { waitS: 3, respondAsync: false });
  });
});

describe('isBrowserNavigation', () => {
  it('is a GET or HEAD that accepts text/html', () => {
    const chrome = 'text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8';
    assert.equal(isBrowserNavigation(req('GET', { accept: chrome })), true);
    assert.equal(isBrowserNavigation(req('HEAD', { accept: 'text/html' })), true);
    assert.equal(isBrowserNavigation(req('POST', { accept: chrome })), false);
    assert.equal(isBrowserNavigation(req('GET', { accept: '*/*' })), false);
    assert.equal(isBrowserNavigation(req('GET', { accept: 'application/json' })), false);
    assert.equal(isBrowserNavigation(req('GET', { accept: 'text/html-fragment' })), false);
    assert.equal(isBrowserNavigation(req('GET', {})), false);
  });
});

describe('planWait', () => {
  const browser = { accept: 'text/html,*/*;q=0.8' };
  const settings = { browserPage: true };

  it('gives a browser navigation the page', () => {
    assert.deepEqual(planWait(req('GET', browser), settings, 30_000), { kind: 'page' });
  });

  it('holds a browser that prefers to wait, and an API client for the default wait', () => {
    assert.deepEqual(planWait(req('GET', { ...browser, prefer: 'wait=3' }), settings, 30_000),
      { kind: 'hold', holdMs: 3000, applied: 'wait=3', thenAsync: false });
    assert.deepEqual(planWait(req('GET', { accept: 'application/json' }), settings, 30_000),
      { kind: 'hold', holdMs: 30_000, applied: undefined, thenAsync: false });
    assert.deepEqual(planWait(req('GET', browser), { browserPage: false }, 30_000),
      { kind: 'hold', holdMs: 30_000, applied: undefined, thenAsync: false });
  });

  it('never holds beyond the resource hold timeout, and says what it applied', () => {
    assert.deepEqual(planWait(req('GET', { prefer: 'wait=3600' }), settings, 20_000),
      { kind: 'hold', holdMs: 20_000, applied: 'wait=20', thenAsync: false });
    assert.deepEqual(planWait(req('GET', {}), { browserPage: true, defaultWaitMs: 90_000 }, 20_000),
      { kind: 'hold', holdMs: 20_000, applied: undefined, thenAsync: false });
    assert.deepEqual(planWait(req('GET', {}), { browserPage: true, defaultWaitMs: 2_000 }, 20_000),
      { kind: 'hold', holdMs: 2_000, applied: undefined, thenAsync: false });
  });

  it('answers respond-async at once, or after wait=N when both are given (§4.3)', () => {
    assert.deepEqual(planWait(req('POST', { prefer: 'respond-async' }), settings, 20_000), { kind: 'async' });
    assert.deepEqual(planWait(req('GET', { ...browser, prefer: 'respond-async' }), settings, 20_000), { kind: 'async' });
    assert.deepEqual(planWait(req('GET', { prefer: 'respond-async, wait=2' }), settings, 20_000),
      { kind: 'hold', holdMs: 2000, applied: 'respond-async, wait=2', thenAsync: true });
  });
});
