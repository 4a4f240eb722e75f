/**
 * Values of the identity headers the backend receives. User names come from JWT claims or a
 * front proxy and may hold anything (commas, non-ASCII, CR LF); header values must be visible
 * ASCII (RFC 9110 §5.5) and must not be ambiguous. So every character outside
 * `A-Z a-z 0-9 - . _ ~ @ + : =` is percent-encoded as UTF-8 (RFC 3986 §2.1), `%` included:
 * a backend decodes with `decodeURIComponent` (not form decoding: `+` stays `+`), and a value
 * made only of safe characters, as most are, reads exactly as it is. Groups already follow
 * that grammar; they are joined with `,`, which is never part of an encoded value.
 */

const SAFE_RE = /^[A-Za-z0-9\-._~@+:=]*$/;

export function encodeHeaderValue(value: string): string {
  if (SAFE_RE.test(value)) return value;
  let out = '';
  for (const ch of value) {
    if (SAFE_RE.test(ch)) out += ch;
    else for (const b of Buffer.from(ch, 'utf8')) out += `%${b.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

export function encodeGroups(groups: readonly string[]): string {
  return groups.map(encodeHeaderValue).join(',');
}
