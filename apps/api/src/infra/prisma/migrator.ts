import { createHash, randomUUID } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import pg from 'pg';

/**
 * Applies the SQL migrations in `prisma/migrations` the way `prisma migrate deploy` does, without
 * Prisma's schema engine (which cannot be downloaded on this project's machines, ENVIRONMENT.md).
 *
 * Compatible with Prisma on purpose: the same advisory lock, the same `_prisma_migrations` table
 * and rows (id, sha256-hex checksum of the file, started/finished timestamps, applied steps), so
 * a machine with the engine sees the history as its own and `prisma migrate status` agrees.
 * Stricter than Prisma in two ways: each migration runs in one transaction together with its
 * history row (PostgreSQL DDL is transactional, so a failure leaves nothing half-applied and
 * nothing recorded), and an applied migration whose file changed stops the run.
 */

/** Prisma Migrate's advisory lock key on PostgreSQL: api replicas and `prisma migrate` serialise. */
export const MIGRATION_ADVISORY_LOCK_KEY = 72707369;

/** `prisma/migrations` of this repository, from both `src/` and `dist/` of apps/api. */
export const DEFAULT_MIGRATIONS_DIR = path.resolve(import.meta.dirname, '../../../../../prisma/migrations');

/** Prisma's own DDL for its history table (schema-engine, sql-schema-connector, postgres flavour). */
const CREATE_MIGRATIONS_TABLE = `CREATE TABLE _prisma_migrations (
    id                      VARCHAR(36) PRIMARY KEY NOT NULL,
    checksum                VARCHAR(64) NOT NULL,
    finished_at             TIMESTAMPTZ,
    migration_name          VARCHAR(255) NOT NULL,
    logs                    TEXT,
    rolled_back_at          TIMESTAMPTZ,
    started_at              TIMESTAMPTZ NOT NULL DEFAULT now(),
    applied_steps_count     INTEGER NOT NULL DEFAULT 0
);`;

/** Stable codes of what can stop a migration run. */
export type MigrationErrorCode =
  | 'MIGRATIONS_DIR_INVALID'
  | 'MIGRATION_LOCK_TIMEOUT'
  | 'DATABASE_NOT_EMPTY'
  | 'MIGRATION_HISTORY_FAILED'
  | 'MIGRATION_CHECKSUM_MISMATCH'
  | 'MIGRATION_FAILED';

/** Why the migrator refused or failed; `migration` names the migration concerned, if any. */
export class MigrationError extends Error {
  override readonly name = 'MigrationError';
  constructor(
    readonly code: MigrationErrorCode,
    message: string,
    readonly migration?: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** One migration folder: `<timestamp>_<name>/migration.sql`. */
export interface MigrationFile {
  /** The folder name, which Prisma records as `migration_name`. */
  readonly name: string;
  readonly script: string;
  /** SHA-256 of the script, lowercase hex (Prisma's `checksum`). */
  readonly checksum: string;
}

/** A row of `_prisma_migrations`. */
export interface MigrationRecord {
  readonly id: string;
  readonly checksum: string;
  readonly migrationName: string;
  readonly logs: string | null;
  readonly startedAt: Date;
  readonly finishedAt: Date | null;
  readonly rolledBackAt: Date | null;
  readonly appliedStepsCount: number;
}

/** What a run did. */
export interface MigrateResult {
  /** Migrations this run applied, in order. */
  readonly applied: readonly string[];
  /** Migrations that were already applied before this run. */
  readonly alreadyApplied: readonly string[];
  /** Migrations recorded in the database but absent from the folder (a newer release ran). */
  readonly unknown: readonly string[];
}

/** Options of {@link migrate}. */
export interface MigrateOptions {
  /** Connection URL; the migrations apply to the connection's default schema (`public`). */
  readonly databaseUrl: string;
  readonly migrationsDir?: string;
  /** How long to wait for another migrator holding the lock (default 60 s). */
  readonly lockTimeoutMs?: number;
  /** Called once per applied migration. */
  readonly onApplied?: (name: string, durationMs: number) => void;
}

/** Prisma's checksum: SHA-256 of the script's UTF-8 bytes as 64 lowercase hex digits. */
export function migrationChecksum(script: string): string {
  return createHash('sha256').update(script, 'utf8').digest('hex');
}

/**
 * Whether `script` matches a recorded checksum, with Prisma's tolerance: CRLF/LF conversions (git
 * on Windows) and the unpadded hex that early Prisma versions wrote.
 */
export function checksumMatches(script: string, checksum: string): boolean {
  const variants = [script, script.replaceAll('\r\n', '\n'), script.replaceAll('\n', '\r\n')];
  return variants.some((variant) => {
    const digest = createHash('sha256').update(variant, 'utf8').digest();
    const rendered =
      checksum.length !== 0 && checksum.length !== 64
        ? [...digest].map((b) => b.toString(16)).join('')
        : digest.toString('hex');
    return rendered === checksum;
  });
}

/** Reads the migration folders in Prisma's order (by folder name) and checks the lock file. */
export function readMigrations(migrationsDir: string = DEFAULT_MIGRATIONS_DIR): MigrationFile[] {
  if (!existsSync(migrationsDir)) {
    throw new MigrationError('MIGRATIONS_DIR_INVALID', `no migrations folder at ${migrationsDir}`);
  }
  const lockFile = path.join(migrationsDir, 'migration_lock.toml');
  if (existsSync(lockFile)) {
    const provider = /^\s*provider\s*=\s*"([^"]*)"/m.exec(readFileSync(lockFile, 'utf8'))?.[1];
    if (provider !== 'postgresql') {
      throw new MigrationError(
        'MIGRATIONS_DIR_INVALID',
        `${lockFile} names provider "${provider ?? '?'}", not "postgresql"`,
      );
    }
  }
  return readdirSync(migrationsDir)
    .filter((entry) => statSync(path.join(migrationsDir, entry)).isDirectory())
    .sort()
    .flatMap((name) => {
      const file = path.join(migrationsDir, name, 'migration.sql');
      if (!existsSync(file)) return [];
      const script = readFileSync(file, 'utf8');
      return [{ name, script, checksum: migrationChecksum(script) }];
    });
}

interface MigrationRow {
  id: string;
  checksum: string;
  migration_name: string;
  logs: string | null;
  started_at: Date;
  finished_at: Date | null;
  rolled_back_at: Date | null;
  applied_steps_count: number;
}

/** Reads `_prisma_migrations`, or null when the table does not exist. */
export async function readMigrationHistory(client: pg.ClientBase): Promise<MigrationRecord[] | null> {
  const exists = await client.query<{ table: string | null }>(
    `SELECT to_regclass('_prisma_migrations')::text AS "table"`,
  );
  if (exists.rows[0]?.table == null) return null;
  const { rows } = await client.query<MigrationRow>(
    `SELECT id, checksum, migration_name, logs, started_at, finished_at, rolled_back_at, applied_steps_count
       FROM _prisma_migrations ORDER BY started_at, migration_name`,
  );
  return rows.map((r) => ({
    id: r.id,
    checksum: r.checksum,
    migrationName: r.migration_name,
    logs: r.logs,
    startedAt: r.started_at,
    finishedAt: r.finished_at,
    rolledBackAt: r.rolled_back_at,
    appliedStepsCount: r.applied_steps_count,
  }));
}

async function acquireLock(client: pg.ClientBase, timeoutMs: number): Promise<void> {
  // lock_timeout bounds the wait for the advisory lock too; reset so migrations are not bounded.
  await client.query(`SELECT set_config('lock_timeout', $1, false)`, [`${Math.max(1, timeoutMs)}ms`]);
  try {
    await client.query('SELECT pg_advisory_lock($1)', [MIGRATION_ADVISORY_LOCK_KEY]);
  } catch (error) {
    if ((error as { code?: string }).code === '55P03') {
      throw new MigrationError(
        'MIGRATION_LOCK_TIMEOUT',
        `another migrator held the migration lock for more than ${timeoutMs} ms`,
        undefined,
        { cause: error },
      );
    }
    throw error;
  } finally {
    await client.query('RESET lock_timeout');
  }
}

async function ensureHistoryTable(client: pg.ClientBase): Promise<MigrationRecord[]> {
  const history = await readMigrationHistory(client);
  if (history) return history;
  // Like `prisma migrate deploy` (P3005): never take over a database someone else populated.
  const tables = await client.query<{ relname: string }>(
    `SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE c.relkind IN ('r', 'p') AND n.nspname = current_schema() LIMIT 5`,
  );
  if (tables.rows.length > 0) {
    throw new MigrationError(
      'DATABASE_NOT_EMPTY',
      `the database has tables (${tables.rows.map((r) => r.relname).join(', ')}) but no migration ` +
        'history; baseline it first (prisma migrate resolve --applied <migration>)',
    );
  }
  await client.query(CREATE_MIGRATIONS_TABLE);
  return [];
}

function checkHistory(history: readonly MigrationRecord[], files: readonly MigrationFile[]): void {
  const failed = history.filter((r) => r.finishedAt === null && r.rolledBackAt === null);
  if (failed.length > 0) {
    throw new MigrationError(
      'MIGRATION_HISTORY_FAILED',
      `failed migrations in the database: ${failed
        .map(
          (r) =>
            `${r.migrationName} (started ${r.startedAt.toISOString()}${r.logs ? `: ${r.logs.trim()}` : ''})`,
        )
        .join('; ')}; resolve them with prisma migrate resolve`,
      failed[0]?.migrationName,
    );
  }
  const byName = new Map(files.map((f) => [f.name, f]));
  for (const record of history) {
    if (record.rolledBackAt !== null) continue;
    const file = byName.get(record.migrationName);
    if (file && !checksumMatches(file.script, record.checksum)) {
      throw new MigrationError(
        'MIGRATION_CHECKSUM_MISMATCH',
        `migration ${record.migrationName} was changed after it was applied ` +
          `(recorded checksum ${record.checksum}, file ${file.checksum}); add a new migration instead`,
        record.migrationName,
      );
    }
  }
}

async function applyOne(client: pg.ClientBase, migration: MigrationFile): Promise<void> {
  const id = randomUUID();
  await client.query('BEGIN');
  try {
    await client.query(
      'INSERT INTO _prisma_migrations (id, checksum, started_at, migration_name) VALUES ($1, $2, now(), $3)',
      [id, migration.checksum, migration.name],
    );
    // No parameters: the simple query protocol runs the whole multi-statement script.
    await client.query(migration.script);
    await client.query(
      `UPDATE _prisma_migrations
          SET applied_steps_count = applied_steps_count + 1, finished_at = clock_timestamp()
        WHERE id = $1`,
      [id],
    );
    await client.query('COMMIT');
  } catch (error) {
    await client.query('ROLLBACK').catch(() => undefined);
    const detail = error instanceof Error ? error.message : String(error);
    throw new MigrationError(
      'MIGRATION_FAILED',
      `migration ${migration.name} failed and was rolled back: ${detail}`,
      migration.name,
      { cause: error },
    );
  }
}

/**
 * Applies every pending migration, in order, each in its own transaction, while holding Prisma
 * Migrate's advisory lock (so replicas starting together apply each migration once). Checks the
 * whole history first and applies nothing when a recorded migration failed or changed.
 */
export async function migrate(options: MigrateOptions): Promise<MigrateResult> {
  const files = readMigrations(options.migrationsDir);
  const client = new pg.Client({
    connectionString: options.databaseUrl,
    application_name: 'hangar-migrator',
  });
  await client.connect();
  try {
    await acquireLock(client, options.lockTimeoutMs ?? 60_000);
    try {
      const history = await ensureHistoryTable(client);
      checkHistory(history, files);
      const done = new Set(history.filter((r) => r.rolledBackAt === null).map((r) => r.migrationName));
      const fileNames = new Set(files.map((f) => f.name));
      const applied: string[] = [];
      for (const migration of files) {
        if (done.has(migration.name)) continue;
        const started = performance.now();
        await applyOne(client, migration);
        applied.push(migration.name);
        options.onApplied?.(migration.name, Math.round(performance.now() - started));
      }
      return {
        applied,
        alreadyApplied: files.filter((f) => done.has(f.name)).map((f) => f.name),
        unknown: [...done].filter((name) => !fileNames.has(name)),
      };
    } finally {
      // Ending the session releases the lock too; do not hide the run's own error behind this one.
      await client
        .query('SELECT pg_advisory_unlock($1)', [MIGRATION_ADVISORY_LOCK_KEY])
        .catch(() => undefined);
    }
  } finally {
    await client.end();
  }
}
