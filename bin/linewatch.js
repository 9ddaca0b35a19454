#!/usr/bin/env node
// Thin launcher: the CLI is compiled to dist/ by `npm install` (the `prepare` script).
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const entry = new URL('../dist/cli/index.js', import.meta.url);
if (!existsSync(fileURLToPath(entry))) {
  console.error('linewatch: dist/ is missing. Run `npm install` (or `npm run build`) in the linewatch folder first.');
  process.exit(2);
}
await import(entry.href);
