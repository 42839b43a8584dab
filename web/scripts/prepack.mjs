// npm's prepack hook (npm pack / npm publish): refuses to pack a package that cannot load. npm
// itself silently skips a missing file named in package.json "files", and a missing .wasm would
// ship a package that fails at run time with a raw ENOENT / 404.
// Checked: every "files" entry exists (a glob matches at least one file), and every src/*.ts
// module has its dist/*.js and dist/*.d.ts, not older than the source.
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const web = join(dirname(fileURLToPath(import.meta.url)), '..');
const pkg = JSON.parse(readFileSync(join(web, 'package.json'), 'utf8'));
const problems = [];

for (const entry of pkg.files) {
  if (entry.includes('*')) {
    const dir = join(web, dirname(entry));
    const re = new RegExp(`^${basename(entry).replace(/[.+?^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*')}$`);
    if (!existsSync(dir) || !readdirSync(dir).some((f) => re.test(f))) problems.push(`${entry}: no file matches`);
  } else if (!existsSync(join(web, entry))) {
    problems.push(`${entry}: missing`);
  }
}
for (const f of readdirSync(join(web, 'src')).filter((f) => f.endsWith('.ts') && !f.endsWith('.d.ts'))) {
  const src = statSync(join(web, 'src', f)).mtimeMs;
  for (const out of [f.replace(/\.ts$/, '.js'), f.replace(/\.ts$/, '.d.ts')]) {
    const p = join(web, 'dist', out);
    if (!existsSync(p)) problems.push(`dist/${out}: missing (built from src/${f})`);
    else if (statSync(p).mtimeMs < src) problems.push(`dist/${out}: older than src/${f}`);
  }
}
if (problems.length) {
  console.error(`tqkv prepack: refusing to pack an incomplete package:\n  ${problems.join('\n  ')}\n` +
    'Build first: `bash ../wasm/build.sh` (the .wasm modules) and `npm run build` (tsc).');
  process.exit(1);
}
