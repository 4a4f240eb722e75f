/**
 * Templates for the `http` provider: `{name}` placeholders filled from the instance
 * (`{resourceId}`, `{instanceKey}`, `{handle}`, `{groups}`, `{user}`, `{serviceId}`),
 * credentials (`{secret.NAME}`), and, in response mappings only, JSON pointers into the
 * answer (`{/server/addresses/private/0/addr}`). Templates are parsed once, so a typo in a
 * config fails at start-up, not on the first request.
 */
import { parsePointer } from './json-pointer.ts';

export const instancePlaceholders = ['resourceId', 'instanceKey', 'handle', 'groups', 'user', 'serviceId'] as const;

export type Part =
  | { readonly kind: 'text'; readonly text: string }
  | { readonly kind: 'var'; readonly name: string }
  | { readonly kind: 'secret'; readonly name: string }
  | { readonly kind: 'pointer'; readonly pointer: string; readonly tokens: readonly string[] };

export interface Template {
  readonly source: string;
  readonly parts: readonly Part[];
}

/** `{{` and `}}` are literal braces (so a JSON-looking header value stays writable). */
export function parseTemplate(source: string, options: { readonly secrets: ReadonlySet<string>; readonly pointers: boolean; readonly where: string }): Template {
  const parts: Part[] = [];
  let text = '';
  for (let i = 0; i < source.length; i++) {
    const c = source[i] as string;
    if ((c === '{' || c === '}') && source[i + 1] === c) {
      text += c;
      i++;
      continue;
    }
    if (c === '}') throw new Error(`${options.where}: unmatched "}" in ${JSON.stringify(source)} (write "}}" for a literal brace)`);
    if (c !== '{') {
      text += c;
      continue;
    }
    const end = source.indexOf('}', i);
    if (end < 0) throw new Error(`${options.where}: unclosed "{" in ${JSON.stringify(source)}`);
    const name = source.slice(i + 1, end);
    if (text !== '') parts.push({ kind: 'text', text });
    text = '';
    if (name.startsWith('/') || name === '') {
      if (!options.pointers) throw new Error(`${options.where}: JSON pointer {${name}} is only allowed in response mappings`);
      parts.push({ kind: 'pointer', pointer: name, tokens: parsePointer(name) });
    } else if (name.startsWith('secret.')) {
      const secret = name.slice('secret.'.length);
      if (!options.secrets.has(secret)) {
        throw new Error(`${options.where}: {${name}} names no credential (known: ${[...options.secrets].join(', ') || 'none'})`);
      }
      parts.push({ kind: 'secret', name: secret });
    } else if ((instancePlaceholders as readonly string[]).includes(name)) {
      parts.push({ kind: 'var', name });
    } else {
      throw new Error(`${options.where}: unknown placeholder {${name}} in ${JSON.stringify(source)} (known: ${instancePlaceholders.map((n) => `{${n}}`).join(', ')}, {secret.NAME}${options.pointers ? ', {/json/pointer}' : ''})`);
    }
    i = end;
  }
  if (text !== '') parts.push({ kind: 'text', text });
  return { source, parts };
}

/** Thrown when a template needs `{handle}` and the instance has none yet. */
export class MissingHandle extends Error {
  constructor() {
    super('the template needs {handle} and no handle is known for this instance');
  }
}

export interface FillContext {
  readonly vars: Readonly<Record<string, string | undefined>>;
  readonly secrets: Readonly<Record<string, string>>;
  /** Resolves a JSON pointer part (response mappings); returns undefined when it finds nothing. */
  readonly pointer?: ((tokens: readonly string[], pointer: string) => string | undefined) | undefined;
  /** Applied to instance values and secrets (not to the literal text): URL encoding. */
  readonly encode?: ((value: string) => string) | undefined;
}

export function fillTemplate(t: Template, ctx: FillContext): string {
  const enc = ctx.encode ?? ((v: string) => v);
  let out = '';
  for (const p of t.parts) {
    switch (p.kind) {
      case 'text':
        out += p.text;
        break;
      case 'var': {
        const v = ctx.vars[p.name];
        if (v === undefined) {
          if (p.name === 'handle') throw new MissingHandle();
          out += '';
        } else {
          out += enc(v);
        }
        break;
      }
      case 'secret':
        out += enc(ctx.secrets[p.name] ?? '');
        break;
      case 'pointer': {
        const v = ctx.pointer?.(p.tokens, p.pointer);
        if (v === undefined) throw new PointerNotFound(p.pointer);
        out += v;
        break;
      }
    }
  }
  return out;
}

export class PointerNotFound extends Error {
  readonly pointer: string;

  constructor(pointer: string) {
    super(`the answer has nothing at JSON pointer ${JSON.stringify(pointer)}`);
    this.pointer = pointer;
  }
}
