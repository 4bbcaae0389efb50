// The published declarations (dist/*.d.ts) type-check an app written against them.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

test('a TypeScript app compiles against dist/index.d.ts', () => {
  const tsc = join(root, 'node_modules/typescript/bin/tsc');
  // Incremental: a run whose inputs (dist/*.d.ts, the app, the libs) hash the same as the last
  // one's reports that run's diagnostics again without checking everything anew.
  const cache = join(root, 'node_modules/.cache/types-test.tsbuildinfo');
  const args = ['--noEmit', '--strict', '--target', 'es2020', '--module', 'es2020', '--moduleResolution', 'bundler', '--lib', 'es2020,dom',
    '--incremental', '--tsBuildInfoFile', cache];
  try {
    execFileSync(process.execPath, [tsc, ...args, join(root, 'test/consumer.ts')], { encoding: 'utf8', timeout: 60_000 });
  } catch (e) {
    assert.fail(`tsc: ${e.stdout}${e.stderr}`);
  }
});
