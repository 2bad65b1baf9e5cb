import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { migrate } from '../../src/infra/prisma/migrator.js';
import { PrismaService } from '../../src/infra/prisma/prisma.service.js';

/** The running PostgreSQL the tests use (ENVIRONMENT.md: every machine has one at 5432, trust auth). */
export const ADMIN_DATABASE_URL = process.env.DATABASE_URL ?? 'postgresql://postgres@127.0.0.1:5432/postgres';

/** Test databases are `hangar_test_<creation time, base 36 ms>_<random>`: the sweep reads the time. */
const TEST_DB_PATTERN = /^hangar_test_([0-9a-z]+)_[0-9a-f]{8}$/;
const SWEEP_AFTER_MS = 60 * 60 * 1000;

/** A database of its own for one test file; `drop()` disconnects and removes it. */
export interface TestDatabase {
  readonly name: string;
  readonly url: string;
  readonly prisma: PrismaService;
  drop(): Promise<void>;
}

/** The URL of `database` on the same server (and with the same credentials) as the admin URL. */
export function databaseUrl(database: string): string {
  const url = new URL(ADMIN_DATABASE_URL);
  url.pathname = `/${database}`;
  return url.toString();
}

async function withAdmin<T>(fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({
    connectionString: ADMIN_DATABASE_URL,
    application_name: 'hangar-test-admin',
  });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

let swept: Promise<string[]> | undefined;

/**
 * Drops `hangar_test_*` databases that killed runs left behind more than an hour ago. Only names
 * this helper makes are touched; fresh ones may belong to a run in progress.
 */
export function sweepTestDatabases(): Promise<string[]> {
  swept ??= withAdmin(async (admin) => {
    const { rows } = await admin.query<{ datname: string }>(
      `SELECT datname FROM pg_database WHERE datname LIKE 'hangar\\_test\\_%'`,
    );
    const dropped: string[] = [];
    for (const { datname } of rows) {
      const created = TEST_DB_PATTERN.exec(datname)?.[1];
      if (created === undefined || Date.now() - Number.parseInt(created, 36) < SWEEP_AFTER_MS) continue;
      await admin.query(`DROP DATABASE IF EXISTS "${datname}" WITH (FORCE)`);
      dropped.push(datname);
    }
    return dropped;
  });
  return swept;
}

/** Creates an empty database; `migrate: true` (default) applies the migrations to it. */
export async function createTestDatabase(options: { migrate?: boolean } = {}): Promise<TestDatabase> {
  await sweepTestDatabases();
  const name = `hangar_test_${Date.now().toString(36)}_${randomBytes(4).toString('hex')}`;
  await withAdmin((admin) => admin.query(`CREATE DATABASE "${name}"`));
  const url = databaseUrl(name);
  const drop = async (): Promise<void> => {
    await withAdmin((admin) => admin.query(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`));
  };
  let prisma: PrismaService | undefined;
  try {
    if (options.migrate ?? true) await migrate({ databaseUrl: url });
    prisma = new PrismaService({ url, poolMax: 20, applicationName: 'hangar-test' });
    await prisma.$connect();
  } catch (error) {
    await prisma?.$disconnect().catch(() => undefined);
    await drop();
    throw error;
  }
  const client = prisma;
  return {
    name,
    url,
    prisma: client,
    drop: async () => {
      await client.$disconnect().catch(() => undefined);
      await drop();
    },
  };
}
