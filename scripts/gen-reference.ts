/**
 * Writes the generated reference pages (config, errors, metrics) from the code. `npm test` runs a
 * test that fails when the files on disk differ, so docs cannot drift from the code.
 */
import { writeFileSync } from 'node:fs';
import { limitsReference } from '../src/config/limits-reference.ts';
import { configReference } from '../src/config/reference.ts';
import { errorReference } from '../src/proxy/error-reference.ts';
import { adminOpenApiText } from '../src/admin/openapi.ts';
import { metricsReference } from '../src/metrics/catalogue.ts';

const root = new URL('../docs/reference/', import.meta.url);
writeFileSync(new URL('config.md', root), configReference());
writeFileSync(new URL('errors.md', root), errorReference());
writeFileSync(new URL('limits.md', root), limitsReference());
writeFileSync(new URL('admin-api.json', root), adminOpenApiText());
writeFileSync(new URL('metrics.md', root), metricsReference());
process.stdout.write('docs/reference/config.md, errors.md, limits.md, admin-api.json and metrics.md written\n');
