/**
 * `node apps/api/dist/infra/prisma/migrate-cli.js`: applies pending migrations to DATABASE_URL.
 * Options: `--dir <migrations folder>` (default: the repository's prisma/migrations, or
 * HANGAR_MIGRATIONS_DIR), `--lock-timeout-ms <n>`. Exit status 0 when the database is up to date,
 * 1 on refusal or failure (the message names the code and the migration), 2 on bad usage.
 */
import { parseArgs } from 'node:util';
import { DEFAULT_MIGRATIONS_DIR, MigrationError, migrate } from './migrator.js';

async function main(): Promise<number> {
  let values: { dir?: string | undefined; 'lock-timeout-ms'?: string | undefined };
  try {
    ({ values } = parseArgs({
      options: { dir: { type: 'string' }, 'lock-timeout-ms': { type: 'string' } },
      strict: true,
    }));
  } catch (error) {
    process.stderr.write(
      `${(error as Error).message}\nusage: migrate-cli [--dir DIR] [--lock-timeout-ms N]\n`,
    );
    return 2;
  }
  const databaseUrl = process.env.DATABASE_URL;
  if (!databaseUrl) {
    process.stderr.write('DATABASE_URL is not set\n');
    return 2;
  }
  const lockTimeoutMs =
    values['lock-timeout-ms'] === undefined ? undefined : Number(values['lock-timeout-ms']);
  if (lockTimeoutMs !== undefined && !(Number.isInteger(lockTimeoutMs) && lockTimeoutMs > 0)) {
    process.stderr.write('--lock-timeout-ms must be a positive integer\n');
    return 2;
  }
  const migrationsDir = values.dir ?? process.env.HANGAR_MIGRATIONS_DIR ?? DEFAULT_MIGRATIONS_DIR;
  try {
    const result = await migrate({
      databaseUrl,
      migrationsDir,
      ...(lockTimeoutMs === undefined ? {} : { lockTimeoutMs }),
      onApplied: (name, ms) => process.stdout.write(`applied ${name} (${ms} ms)\n`),
    });
    if (result.applied.length === 0) {
      process.stdout.write(`database is up to date (${result.alreadyApplied.length} migrations applied)\n`);
    }
    for (const name of result.unknown) {
      process.stdout.write(`note: ${name} is applied in the database but not in ${migrationsDir}\n`);
    }
    return 0;
  } catch (error) {
    if (error instanceof MigrationError) {
      process.stderr.write(`${error.code}: ${error.message}\n`);
      return 1;
    }
    process.stderr.write(`migration failed: ${error instanceof Error ? error.message : String(error)}\n`);
    return 1;
  }
}

process.exitCode = await main();
