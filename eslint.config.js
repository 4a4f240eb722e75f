// @ts-check
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['node_modules/', '.tools/', 'var/', 'bench/out/', 'bench/.deps/', 'docs/', 'eslint.config.js'] },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      // node:test's describe/it return promises that the runner itself awaits.
      '@typescript-eslint/no-floating-promises': ['error', {
        allowForKnownSafeCalls: [{ from: 'package', package: 'node:test', name: ['describe', 'it', 'test', 'suite', 'before', 'after', 'beforeEach', 'afterEach'] }],
      }],
      '@typescript-eslint/no-misused-promises': 'error',
      '@typescript-eslint/require-await': 'off',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      '@typescript-eslint/consistent-type-imports': 'error',
      'no-restricted-properties': ['error', { object: 'process', property: 'env', message: 'Read the environment in src/config/ only.' }],
    },
  },
  {
    // The domain knows nothing of HTTP, undici, Redis or the other layers (docs/design.md, dependency direction).
    files: ['src/core/**/*.ts'],
    rules: {
      'no-restricted-imports': ['error', { patterns: [
        { group: ['node:http', 'node:https', 'node:http2', 'node:net', 'undici', 'ioredis', 'redis', 'pino'], message: 'core/ stays free of I/O libraries.' },
        { group: ['../proxy/*', '../providers/*', '../state/*', '../admin/*', '../config/*', '../mock-cloud/*'], message: 'core/ imports nothing outside core/.' },
      ] }],
    },
  },
  {
    files: ['src/providers/**/*.ts'],
    rules: {
      'no-restricted-imports': ['error', { patterns: [
        { group: ['../../proxy/*', '../../admin/*', '../../state/*'], message: 'Providers depend on core only.' },
      ] }],
    },
  },
  {
    // Plain JavaScript that must run on old Nodes (the launcher): linted without type information.
    files: ['**/*.mjs'],
    ...tseslint.configs.disableTypeChecked,
    languageOptions: {
      ...tseslint.configs.disableTypeChecked.languageOptions,
      globals: { process: 'readonly', URL: 'readonly', setTimeout: 'readonly', clearTimeout: 'readonly', setInterval: 'readonly', clearInterval: 'readonly' },
    },
    rules: { ...tseslint.configs.disableTypeChecked.rules, 'no-restricted-properties': 'off' },
  },
  {
    // Plain JavaScript type-checked like the TypeScript (`// @ts-check`, JSDoc types): the entry
    // and the compile cache it turns on before any TypeScript is loaded (bin/smart-proxy.js).
    files: ['bin/**/*.js', 'src/**/*.js', 'bench/**/*.js', 'test/**/*.js'],
    languageOptions: { globals: { process: 'readonly' } },
  },
  {
    files: ['src/config/**/*.ts', 'src/config/**/*.js', 'test/**/*.ts', 'test/**/*.js', 'bench/**/*.ts', 'scripts/**/*.ts'],
    rules: { 'no-restricted-properties': 'off' },
  },
  {
    files: ['test/**/*.ts', 'bench/**/*.ts'],
    rules: {
      '@typescript-eslint/no-non-null-assertion': 'off',
      '@typescript-eslint/no-unsafe-assignment': 'off',
      '@typescript-eslint/no-unsafe-member-access': 'off',
    },
  },
);
