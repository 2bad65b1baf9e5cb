#!/usr/bin/env node
// Generates the Prisma client (apps/api/src/gen/prisma) and the DMMF datamodel
// (apps/api/src/gen/prisma-dmmf) from prisma/schema.prisma, offline.
//
// Prisma 7's CLI wants to download its native schema engine for every command, from a host this
// project's machines cannot reach. `generate` never runs that engine; the CLI only checks that
// PRISMA_SCHEMA_ENGINE_BINARY names an existing file, so any existing file will do.
// Skips the work when neither the schema, the generators nor Prisma's version changed.
//
// Usage: node apps/api/scripts/prisma-generate.mjs [--force]
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';

const root = path.resolve(import.meta.dirname, '../../..');
const genDir = path.join(root, 'apps/api/src/gen');
const stampFile = path.join(genDir, '.schema-sha256');
const prismaPackage = path.join(root, 'node_modules/prisma/package.json');
const inputs = [
  path.join(root, 'prisma/schema.prisma'),
  path.join(root, 'prisma/prisma.config.ts'),
  path.join(root, 'apps/api/scripts/prisma-dmmf-generator.mjs'),
  prismaPackage,
];

const hash = createHash('sha256');
for (const file of inputs) hash.update(readFileSync(file));
const digest = hash.digest('hex');

const outputs = [path.join(genDir, 'prisma/client.ts'), path.join(genDir, 'prisma-dmmf/datamodel.ts')];
const upToDate =
  !process.argv.includes('--force') &&
  existsSync(stampFile) &&
  readFileSync(stampFile, 'utf8').trim() === digest &&
  outputs.every((file) => existsSync(file));
if (upToDate) process.exit(0);

const engine = process.env.PRISMA_SCHEMA_ENGINE_BINARY;
const env = {
  ...process.env,
  PRISMA_SCHEMA_ENGINE_BINARY: engine && existsSync(engine) ? engine : process.execPath,
  PRISMA_HIDE_UPDATE_MESSAGE: '1',
  CHECKPOINT_DISABLE: '1',
};
const cli = path.join(root, 'node_modules/prisma/build/index.js');
// cwd = the repository root: the DMMF generator's provider command is relative to it.
const result = spawnSync(
  process.execPath,
  [cli, 'generate', '--config', 'prisma/prisma.config.ts', '--no-hints'],
  { cwd: root, env, encoding: 'utf8' },
);
if (result.status !== 0) {
  process.stderr.write(result.stdout ?? '');
  process.stderr.write(result.stderr ?? '');
  process.stderr.write(`prisma generate failed (exit ${result.status ?? result.signal})\n`);
  process.exit(1);
}
writeFileSync(stampFile, `${digest}\n`);
