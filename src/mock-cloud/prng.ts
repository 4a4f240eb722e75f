import { randomInt } from 'node:crypto';

/** A pseudo-random source in [0, 1). */
export type Prng = () => number;

/**
 * mulberry32: a tiny 32-bit PRNG. Not for security; chosen because a seed makes a mock run
 * (which boots fail, hang, and how long each takes) reproducible in tests and demos.
 * Without a seed, one is drawn from the OS so that runs differ.
 */
export function createPrng(seed?: number): Prng {
  let state = (seed ?? randomInt(0, 2 ** 32)) >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
