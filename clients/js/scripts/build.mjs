// Build realtimed-client: type declarations with tsc, the ES module bundle with esbuild,
// and the size figure: the whole API minified with esbuild, then gzipped.
//   node scripts/build.mjs              build dist/ and print the size
//   node scripts/build.mjs --size-only  print the size only (npm run size)
import { execFileSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { build } from 'esbuild';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const entry = join(root, 'src/index.ts');
const common = { entryPoints: [entry], bundle: true, format: 'esm', target: 'es2020', platform: 'neutral', logLevel: 'warning' };

if (!process.argv.includes('--size-only')) {
  rmSync(join(root, 'dist'), { recursive: true, force: true });
  execFileSync(process.execPath, [join(root, 'node_modules/typescript/bin/tsc'), '-p', root], { stdio: 'inherit' });
  await build({ ...common, outfile: join(root, 'dist/index.js'), sourcemap: true });
}

const out = await build({ ...common, minify: true, write: false, outfile: 'size.js' });
const code = out.outputFiles[0].contents;
const gz = gzipSync(code, { level: 9 }).length;
console.log(`realtimed-client: ${code.length} bytes minified, ${gz} bytes minified+gzip (${(gz / 1024).toFixed(1)} KiB)`);
