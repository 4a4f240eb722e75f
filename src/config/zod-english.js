// @ts-check
/**
 * What zod's `locales` index exports in this process: English alone. zod's core re-exports
 * every locale it ships (`export * as locales`, some 60 modules) and every zod module imports
 * that core, so `import { z } from 'zod'` loaded them all on every start, about 77M
 * instructions, for messages the proxy never shows: it keeps zod's default, English, which
 * zod's schemas import from `locales/en.js` themselves, not through this index. The entry
 * points the index here (zod-locales-hook.js); `z.locales.en` stays, no other is reachable.
 */
export { default as en } from 'zod/v4/locales/en.js';
