// Parses an AsyncAPI document with @asyncapi/parser and prints its diagnostics to stderr.
// Exits 1 when any diagnostic has error severity (or nothing could be parsed), 2 on bad usage.
// With --json, also prints the YAML as plain JSON on stdout (no $ref resolved), so that the
// caller can compare it with what it generated.
import { readFile } from 'node:fs/promises';
import { Parser, DiagnosticSeverity } from '@asyncapi/parser';
import yaml from 'js-yaml';

const args = process.argv.slice(2);
const path = args.find((arg) => !arg.startsWith('--'));
if (!path) {
  console.error('usage: node check_asyncapi.mjs FILE [--json]');
  process.exit(2);
}
const text = await readFile(path, 'utf8');
const { document, diagnostics } = await new Parser().parse(text, { source: path });
let errors = 0;
for (const d of diagnostics) {
  const severity = DiagnosticSeverity[d.severity] ?? String(d.severity);
  if (d.severity === DiagnosticSeverity.Error) errors += 1;
  console.error(`${severity} ${d.code} at ${JSON.stringify(d.path)}: ${d.message}`);
}
if (!document) {
  console.error('no document was parsed');
  errors += 1;
}
if (args.includes('--json')) {
  process.stdout.write(JSON.stringify(yaml.load(text, { schema: yaml.JSON_SCHEMA })));
}
// exitCode rather than exit(): exit() may drop what is still buffered for a pipe.
process.exitCode = errors > 0 ? 1 : 0;
