import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { freePort } from './free-port.ts';

void describe('freePort', () => {
  void it('never hands out the same port twice in one process (a test takes several before it binds any)', async () => {
    // 400 draws from ~10,000 ports: without the record of handed-out ports, a repeat is
    // all but certain (the birthday bound: 1 - e^-8, 99.97 %).
    const ports: number[] = [];
    for (let i = 0; i < 400; i++) ports.push(await freePort());
    assert.equal(new Set(ports).size, ports.length);
  });
});
