/**
 * A fast reader for the plain subset of YAML that configs are written in (block mappings and
 * sequences, one-line flow collections, plain and one-line quoted scalars, comments), which
 * answers `undefined` for anything else.
 *
 * Why: the `yaml` library builds a full document (every node with its source range, which
 * its error messages need) at about 10 µs per line: a generated config with 10,000 resources
 * spent ~0.65 s of its start-up there. This reader yields the same plain data in a few
 * percent of that.
 *
 * Safety: it is only a shortcut. Whenever a text holds anything it does not fully understand
 * (anchors, aliases, tags, block or multi-line scalars, escapes, tabs, CR, documents markers,
 * non-string keys, a duplicate key, odd indentation, …) it gives up and the caller runs the
 * full `yaml` parse, which alone reports errors (with line and column). Where it answers, the
 * answer is exactly what `yaml`'s `toJS()` gives (core schema: scalars resolve by the same
 * tests, in the same order); test/config/plain-yaml.test.ts checks that against `yaml` on
 * generated and mutated texts.
 */

/** Thrown inside to give up; never escapes parsePlainYaml. */
class GiveUp extends Error {}

/**
 * Deeper nesting than this gives up (configs nest a few levels). Reading recurses once per
 * level, so without a bound a hostile `[[[[…` or a staircase of indents would overflow the
 * stack here, where the full parser reports an error.
 */
const MAX_DEPTH = 64;

// yaml 2's core schema, in its order (yaml/dist/schema/core/*.js).
const NULL = /^(?:~|[Nn]ull|NULL)?$/;
const BOOL = /^(?:[Tt]rue|TRUE|[Ff]alse|FALSE)$/;
const INT_OCT = /^0o[0-7]+$/;
const INT = /^[-+]?[0-9]+$/;
const INT_HEX = /^0x[0-9a-fA-F]+$/;
const FLOAT_NAN = /^(?:[-+]?\.(?:inf|Inf|INF)|\.nan|\.NaN|\.NAN)$/;
const FLOAT_EXP = /^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)[eE][-+]?[0-9]+$/;
const FLOAT = /^[-+]?(?:\.[0-9]+|[0-9]+\.[0-9]*)$/;

/**
 * Characters that end the fast path anywhere in the text: tabs, CR, other controls, odd line
 * breaks, and what JavaScript's trim() takes for white space but YAML does not (no-break
 * spaces, BOM), so that trimming here is YAML's.
 */
// eslint-disable-next-line no-control-regex
const REFUSED_CHARS = /[\u0000-\u0009\u000b-\u001f\u007f\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]/;
/** A plain key: what config keys look like. Anything else (spaces, quotes aside) gives up. */
const PLAIN_KEY = /^[A-Za-z0-9_][A-Za-z0-9_./-]*$/;
/** First characters a plain scalar may not have (YAML indicators). `-` is checked apart. */
const INDICATORS = '?:,[]{}#&*!|>\'"%@`';

/** First characters of every plain scalar the core schema reads as other than a string. */
const NON_STRING_START = '~nNtTfF0123456789+-.';

/** What a plain scalar means under the core schema. */
function resolvePlain(s: string): unknown {
  // Most keys and values (`provider`, `static`, `http://…`): a string, known from its first character.
  if (s !== '' && !NON_STRING_START.includes(s[0]!)) return s;
  if (NULL.test(s)) return null;
  if (BOOL.test(s)) return s[0] === 't' || s[0] === 'T';
  if (INT_OCT.test(s)) return parseInt(s.substring(2), 8);
  if (INT.test(s)) return parseInt(s, 10);
  if (INT_HEX.test(s)) return parseInt(s.substring(2), 16);
  if (FLOAT_NAN.test(s)) return s.slice(-3).toLowerCase() === 'nan' ? NaN : s[0] === '-' ? -Infinity : Infinity;
  if (FLOAT_EXP.test(s) || FLOAT.test(s)) return parseFloat(s);
  return s;
}

interface Line {
  indent: number;
  /** The line without its indentation (may end in a comment). */
  text: string;
}

/** The plain data of `text`, or undefined when the full parser must decide. */
export function parsePlainYaml(text: string): unknown {
  if (REFUSED_CHARS.test(text)) return undefined;
  const lines: Line[] = [];
  for (const raw of text.split('\n')) {
    const content = raw.trimStart();
    if (content === '' || content[0] === '#') continue;
    const indent = raw.length - content.length;
    // Directives and document markers.
    if (indent === 0 && (content[0] === '%' || content.startsWith('---') || content.startsWith('...'))) return undefined;
    lines.push({ indent, text: content.trimEnd() });
  }
  if (lines.length === 0 || lines[0]!.indent !== 0) return undefined;
  try {
    const reader = new Reader(lines);
    // A one-line flow document (`{ a: 1 }`) or the usual block mapping.
    const value = lines[0]!.text[0] === '{' ? reader.inline(lines[reader.at++]!.text, -1) : reader.block(0);
    if (reader.at < lines.length || value === null || typeof value !== 'object' || Array.isArray(value)) return undefined;
    return value;
  } catch (err) {
    if (err instanceof GiveUp) return undefined;
    throw err;
  }
}

function giveUp(): never {
  throw new GiveUp('not plain YAML');
}

class Reader {
  at = 0;
  private depth = 0;
  private readonly lines: Line[];

  constructor(lines: Line[]) {
    this.lines = lines;
  }

  /** The node whose first line is the current one, at `indent`. */
  block(indent: number): unknown {
    const line = this.lines[this.at]!;
    if (line.indent !== indent || ++this.depth > MAX_DEPTH) giveUp();
    const value = isSeqItem(line.text) ? this.sequence(indent) : this.mapping(indent);
    this.depth--;
    return value;
  }

  private mapping(indent: number): Record<string, unknown> {
    const out: Record<string, unknown> = {};
    while (this.at < this.lines.length) {
      const line = this.lines[this.at]!;
      if (line.indent < indent) break;
      if (line.indent > indent || isSeqItem(line.text)) giveUp();
      const entry = keyOf(line.text);
      if (entry === undefined) giveUp();
      const [key, rest] = entry;
      if (Object.hasOwn(out, key)) giveUp();
      this.at++;
      out[key] = rest === '' ? this.nested(indent, true) : this.inline(rest, indent);
    }
    return out;
  }

  private sequence(indent: number): unknown[] {
    const out: unknown[] = [];
    while (this.at < this.lines.length) {
      const line = this.lines[this.at]!;
      if (line.indent < indent) break;
      if (line.indent > indent) giveUp();
      if (!isSeqItem(line.text)) break;
      const rest = line.text.slice(1).trimStart();
      const offset = line.text.length - rest.length;
      if (rest === '' || rest[0] === '#') {
        this.at++;
        out.push(this.nested(indent, false));
      } else if (isSeqItem(rest) || keyOf(rest) !== undefined) {
        // `- key: value` or `- - item`: a block node starting on this line, at the column of `rest`.
        this.lines[this.at] = { indent: indent + offset, text: rest };
        out.push(this.block(indent + offset));
      } else {
        this.at++;
        out.push(this.inline(rest, indent));
      }
    }
    return out;
  }

  /** The value of an entry with nothing after its indicator: a deeper block, or null. */
  private nested(indent: number, inMapping: boolean): unknown {
    const next = this.lines[this.at];
    if (next === undefined || next.indent < indent) return null;
    if (next.indent > indent) return this.block(next.indent);
    // A mapping's value may be a sequence at the mapping's own indentation.
    return inMapping && isSeqItem(next.text) ? this.sequence(indent) : null;
  }

  /** A value written on its entry's line; nothing may continue it on the next lines. */
  inline(rest: string, indent: number): unknown {
    const next = this.lines[this.at];
    if (next !== undefined && next.indent > indent) giveUp();
    const [value, end] = scalarOrFlow(rest, 0, false);
    if (!isEnd(rest, end)) giveUp();
    return value;
  }
}

function isSeqItem(text: string): boolean {
  return text[0] === '-' && (text.length === 1 || text[1] === ' ');
}

/** `key: rest` (rest without the space), or undefined when the text is not a simple entry. */
function keyOf(text: string): [string, string] | undefined {
  let key: string;
  let after: number;
  if (text[0] === '"' || text[0] === "'") {
    const [value, end] = quoted(text, 0);
    key = value;
    after = end;
  } else {
    after = text.indexOf(':');
    if (after <= 0) return undefined;
    key = text.slice(0, after);
    if (!PLAIN_KEY.test(key)) {
      // Some other `x: y` on the line is a key this reader does not take; no `: ` is a scalar.
      if (/:(?: |$)/.test(text.split(' #')[0]!)) giveUp();
      return undefined;
    }
    if (typeof resolvePlain(key) !== 'string') giveUp();
  }
  if (text[after] !== ':') return undefined;
  if (after + 1 < text.length && text[after + 1] !== ' ') {
    if (text[0] === '"' || text[0] === "'") giveUp();
    return undefined;
  }
  if (key === '__proto__' || key.length > 1000) giveUp();
  const rest = text.slice(after + 1).trimStart();
  return [key, rest[0] === '#' ? '' : rest];
}

/** Only a comment (after a space) or nothing from `end` on. */
function isEnd(text: string, end: number): boolean {
  if (end === text.length) return true;
  if (text[end] !== ' ') return false;
  const rest = text.slice(end).trimStart();
  return rest === '' || rest[0] === '#';
}

/** A one-line quoted scalar at `start`: its value and the index after the closing quote. */
function quoted(text: string, start: number): [string, number] {
  const q = text[start]!;
  let out = '';
  let i = start + 1;
  for (;;) {
    const close = text.indexOf(q, i);
    if (close < 0) giveUp();
    out += text.slice(i, close);
    if (q === "'" && text[close + 1] === "'") {
      out += "'";
      i = close + 2;
      continue;
    }
    // Escapes: the full parser knows them all.
    if (q === '"' && out.includes('\\')) giveUp();
    return [out, close + 1];
  }
}

/** A scalar or flow collection at `start` (block context unless `inFlow`): value and end index. */
function scalarOrFlow(text: string, start: number, inFlow: boolean, depth = 0): [unknown, number] {
  const c = text[start];
  if (c === '"' || c === "'") return quoted(text, start);
  if ((c === '{' || c === '[') && depth >= MAX_DEPTH) giveUp();
  if (c === '{') return flowMap(text, start, depth + 1);
  if (c === '[') return flowSeq(text, start, depth + 1);
  // `-` starts a plain scalar only when a word character follows (`-1`, `-x`), never an entry.
  if (c === undefined || INDICATORS.includes(c) || (c === '-' && !/[\w.-]/.test(text[start + 1] ?? ''))) giveUp();
  let end = start;
  for (; end < text.length; end++) {
    const ch = text[end]!;
    if (ch === '#' && text[end - 1] === ' ') break;
    if (ch === ':' && (end + 1 === text.length || text[end + 1] === ' ' || (inFlow && ',[]{}'.includes(text[end + 1]!)))) giveUp();
    if (inFlow && ',[]{}'.includes(ch)) break;
  }
  const s = text.slice(start, end).trimEnd();
  if (inFlow && s.includes(' #')) giveUp();
  return [resolvePlain(s), start + s.length];
}

function skipSpaces(text: string, i: number): number {
  while (text[i] === ' ') i++;
  return i;
}

function flowMap(text: string, start: number, depth: number): [Record<string, unknown>, number] {
  const out: Record<string, unknown> = {};
  let i = skipSpaces(text, start + 1);
  while (text[i] !== '}') {
    let key: string;
    if (text[i] === '"' || text[i] === "'") {
      [key, i] = quoted(text, i);
    } else {
      const m = /^[A-Za-z0-9_][A-Za-z0-9_./-]*/.exec(text.slice(i));
      if (m === null) giveUp();
      key = m[0];
      i += key.length;
      if (typeof resolvePlain(key) !== 'string') giveUp();
    }
    if (text[i] !== ':' || text[i + 1] !== ' ' || key === '__proto__' || Object.hasOwn(out, key)) giveUp();
    i = skipSpaces(text, i + 1);
    let value: unknown;
    [value, i] = scalarOrFlow(text, i, true, depth);
    out[key] = value;
    i = skipSpaces(text, i);
    if (text[i] === ',') i = skipSpaces(text, i + 1);
    else if (text[i] !== '}') giveUp();
  }
  return [out, i + 1];
}

function flowSeq(text: string, start: number, depth: number): [unknown[], number] {
  const out: unknown[] = [];
  let i = skipSpaces(text, start + 1);
  while (text[i] !== ']') {
    let value: unknown;
    [value, i] = scalarOrFlow(text, i, true, depth);
    out.push(value);
    i = skipSpaces(text, i);
    if (text[i] === ',') i = skipSpaces(text, i + 1);
    else if (text[i] !== ']') giveUp();
  }
  return [out, i + 1];
}
