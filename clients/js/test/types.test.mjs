// The published declarations (dist/*.d.ts) type-check an app written against them.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

test('a TypeScript app compiles against dist/index.d.ts', () => {
  const tsc = join(root, 'node_modules/typescript/bin/tsc');
  const args = ['--noEmit', '--strict', '--target', 'es2020', '--module', 'es2020', '--moduleResolution', 'bundler', '--lib', 'es2020,dom'];
  try {
    execFileSync(process.execPath, [tsc, ...args, join(root, 'test/consumer.ts')], { encoding: 'utf8', timeout: 60_000 });
  } catch (e) {
    assert.fail(`tsc: ${e.stdout}${e.stderr}`);
  }
});
