/**
 * Reads a `Retry-After` field from a provider's API (RFC 9110 §10.2.3): delta-seconds or an
 * HTTP-date. The core waits at least this long before calling again (provider-calls.ts), so
 * a rate-limited cloud is not hammered; a malformed value is no value.
 */

/** Seconds to wait (≥ 0, whole), or undefined when the field is absent or malformed. */
export function parseRetryAfter(value: string | readonly string[] | undefined, nowMs: number = Date.now()): number | undefined {
  // Several fields: the first one counts (a list is not allowed here).
  const text = (typeof value === 'string' ? value : value?.[0])?.trim();
  if (text === undefined || text === '') return undefined;
  if (/^\d+$/.test(text)) {
    const s = Number(text);
    return Number.isSafeInteger(s) ? s : undefined;
  }
  // IMF-fixdate and the obsolete forms Date.parse reads; a date in the past means now.
  if (!/^[A-Za-z]{3},? /.test(text)) return undefined;
  const at = Date.parse(text);
  if (Number.isNaN(at)) return undefined;
  return Math.max(0, Math.ceil((at - nowMs) / 1000));
}
