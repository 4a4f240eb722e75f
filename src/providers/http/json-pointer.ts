/**
 * JSON Pointer (RFC 6901) evaluation, read-only. Small enough to own: a pointer is "" (the
 * whole document) or "/"-separated reference tokens where "~1" means "/" and "~0" means "~"
 * (decoded in that order, section 4). Array indices are decimal without leading zeros; "-"
 * (the element after the last) never resolves on read.
 */

export type PointerResult = { readonly found: true; readonly value: unknown } | { readonly found: false };

/** Throws on a syntactically invalid pointer (checked once, at configuration time). */
export function parsePointer(pointer: string): string[] {
  if (pointer === '') return [];
  if (!pointer.startsWith('/')) throw new Error(`JSON pointer ${JSON.stringify(pointer)} must be empty or start with "/" (RFC 6901)`);
  return pointer.slice(1).split('/').map((token) => {
    if (/~[^01]|~$/.test(token)) throw new Error(`JSON pointer ${JSON.stringify(pointer)} has a bad escape ("~" must be followed by 0 or 1)`);
    return token.replaceAll('~1', '/').replaceAll('~0', '~');
  });
}

export function resolvePointer(doc: unknown, tokens: readonly string[]): PointerResult {
  let cur: unknown = doc;
  for (const token of tokens) {
    if (Array.isArray(cur)) {
      if (!/^(0|[1-9][0-9]*)$/.test(token)) return { found: false };
      const i = Number(token);
      if (i >= cur.length) return { found: false };
      cur = cur[i];
    } else if (cur !== null && typeof cur === 'object') {
      if (!Object.hasOwn(cur, token)) return { found: false };
      cur = (cur as Record<string, unknown>)[token];
    } else {
      return { found: false };
    }
  }
  return { found: true, value: cur };
}
