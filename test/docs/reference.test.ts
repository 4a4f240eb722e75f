import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { it } from 'node:test';
import { configReference } from '../../src/config/reference.ts';
import { errorReference } from '../../src/proxy/error-reference.ts';
import { errorCatalogue } from '../../src/core/errors.ts';
import { statusByCode } from '../../src/proxy/error-response.ts';
import { adminOpenApiText } from '../../src/admin/openapi.ts';

const docs = (name: string): string => readFileSync(new URL(`../../docs/reference/${name}`, import.meta.url), 'utf8');

it('docs/reference/config.md matches the schema (run `npm run docs:reference`)', () => {
  assert.equal(docs('config.md'), configReference());
});

it('docs/reference/errors.md matches the error catalogue (run `npm run docs:reference`)', () => {
  assert.equal(docs('errors.md'), errorReference());
});

it('docs/reference/admin-api.json matches the admin API schemas (run `npm run docs:reference`)', () => {
  assert.equal(docs('admin-api.json'), adminOpenApiText());
});

it('every error code maps to an HTTP status of the right class', () => {
  for (const code of Object.keys(errorCatalogue) as Array<keyof typeof errorCatalogue>) {
    const status = statusByCode[code];
    // The one redirect: a browser without a session is sent to sign in (OIDC) instead of a 401.
    if (code === 'SP_ACCESS_SIGN_IN_REQUIRED') assert.equal(status, 302);
    else assert.ok(status >= 400 && status < 600, `${code} → ${status}`);
  }
  assert.deepEqual(Object.keys(statusByCode).sort(), Object.keys(errorCatalogue).sort());
});
