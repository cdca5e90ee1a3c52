// Builds Ember's web console from src/ into crates/console/assets/, which is committed and
// embedded in the binary (crates/console/build.rs), so building Ember never needs Node.js.
//
//   node build.mjs           build, replacing crates/console/assets/
//   node build.mjs --check   build into a temporary directory and fail unless the committed
//                            bundle is byte for byte this build (its .gz/.br forms must
//                            decompress to it: compressors may differ between Node.js versions)
//
// Output: index.html (the shell, no inline script or style), app.<hash>.js and app.<hash>.css
// (content-hashed: served as immutable), each with .gz and .br forms.
import { build } from 'esbuild';
import { createHash } from 'node:crypto';
import { mkdtempSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import zlib from 'node:zlib';

const here = dirname(fileURLToPath(import.meta.url));
const target = join(here, '..', 'crates', 'console', 'assets');
const check = process.argv.includes('--check');

const result = await build({
  entryPoints: [join(here, 'src', 'main.jsx')],
  bundle: true,
  minify: true,
  format: 'esm',
  target: ['es2020'],
  jsx: 'automatic',
  jsxImportSource: 'preact',
  legalComments: 'none',
  charset: 'utf8',
  write: false,
  outdir: 'out',
  logLevel: 'warning',
});

const hash = (bytes) => createHash('sha256').update(bytes).digest('hex').slice(0, 10);
const files = new Map();
for (const out of result.outputFiles) {
  const ext = out.path.endsWith('.css') ? 'css' : 'js';
  files.set(`app.${hash(out.contents)}.${ext}`, Buffer.from(out.contents));
}
const script = [...files.keys()].find((n) => n.endsWith('.js'));
const style = [...files.keys()].find((n) => n.endsWith('.css'));
const shell = readFileSync(join(here, 'src', 'index.html'), 'utf8')
  .replace('%SCRIPT%', `/console/${script}`)
  .replace('%STYLE%', `/console/${style}`);
files.set('index.html', Buffer.from(shell));

function write(dir) {
  mkdirSync(dir, { recursive: true });
  for (const old of readdirSync(dir)) rmSync(join(dir, old));
  for (const [name, bytes] of files) {
    writeFileSync(join(dir, name), bytes);
    writeFileSync(join(dir, `${name}.gz`), zlib.gzipSync(bytes, { level: 9 }));
    writeFileSync(
      join(dir, `${name}.br`),
      zlib.brotliCompressSync(bytes, {
        params: {
          [zlib.constants.BROTLI_PARAM_QUALITY]: 11,
          [zlib.constants.BROTLI_PARAM_SIZE_HINT]: bytes.length,
        },
      }),
    );
  }
}

if (!check) {
  write(target);
  let total = 0;
  for (const name of files.keys()) total += readFileSync(join(target, `${name}.br`)).length;
  console.log(`built ${[...files.keys()].join(', ')} into ${target} (${total} bytes brotli)`);
} else {
  const problems = [];
  const committed = readdirSync(target).sort();
  const expected = [...files.keys()].flatMap((n) => [n, `${n}.br`, `${n}.gz`]).sort();
  if (JSON.stringify(committed) !== JSON.stringify(expected)) {
    problems.push(`files: committed ${committed.join(' ')}; built ${expected.join(' ')}`);
  }
  for (const [name, bytes] of files) {
    const read = (n) => { try { return readFileSync(join(target, n)); } catch { return null; } };
    const plain = read(name);
    if (!plain || !plain.equals(bytes)) problems.push(`${name} differs from the build of src/`);
    const gz = read(`${name}.gz`);
    if (!gz || !zlib.gunzipSync(gz).equals(bytes)) problems.push(`${name}.gz is not ${name}`);
    const br = read(`${name}.br`);
    if (!br || !zlib.brotliDecompressSync(br).equals(bytes)) problems.push(`${name}.br is not ${name}`);
  }
  if (problems.length) {
    console.error('crates/console/assets/ is not the build of console/src: run `npm run build` in console/ and commit it');
    for (const p of problems) console.error(`  ${p}`);
    process.exit(1);
  }
  console.log('crates/console/assets/ is the build of console/src');
}
