import { createHash } from 'node:crypto';
import { cp, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { VM_STATES } from '@hangar/vmm-core';
import { Test } from '@nestjs/testing';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { eventually, makeOwnedTempDir } from '../../../packages/vmm-core/test/support/test-host.js';
import { type DmmfField, type DmmfModel, datamodel } from '../src/gen/prisma-dmmf/datamodel.js';
import {
  checksumMatches,
  DEFAULT_MIGRATIONS_DIR,
  MigrationError,
  migrate,
  readMigrations,
} from '../src/infra/prisma/migrator.js';
import { PrismaModule } from '../src/infra/prisma/prisma.module.js';
import { PrismaService } from '../src/infra/prisma/prisma.service.js';
import { updateVm, VersionConflictError, VmNotFoundError } from '../src/infra/prisma/vm-version.js';
import { createTestDatabase, type TestDatabase } from './support/db.js';

const INIT = '20261122000000_init';

/** Runs `fn` on a plain pg connection to `url`. */
async function withClient<T>(url: string, fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

async function expectMigrationError(promise: Promise<unknown>, code: string): Promise<MigrationError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(MigrationError);
  expect((error as MigrationError).code).toBe(code);
  return error as MigrationError;
}

/** A disposable copy of prisma/migrations the test may change. */
async function copyMigrations(): Promise<string> {
  const dir = await makeOwnedTempDir('migrations');
  await cp(DEFAULT_MIGRATIONS_DIR, path.join(dir, 'migrations'), { recursive: true });
  return path.join(dir, 'migrations');
}

describe('migrator', () => {
  const databases: TestDatabase[] = [];
  const tempDirs: string[] = [];
  afterEach(async () => {
    await Promise.all(databases.splice(0).map((db) => db.drop()));
    await Promise.all(
      tempDirs.splice(0).map((dir) => rm(path.dirname(dir), { recursive: true, force: true })),
    );
  });
  async function emptyDatabase(): Promise<TestDatabase> {
    const db = await createTestDatabase({ migrate: false });
    databases.push(db);
    return db;
  }

  it('applies the migrations to an empty database; a second run is a no-op', async () => {
    const db = await emptyDatabase();
    const first = await migrate({ databaseUrl: db.url });
    expect(first.applied).toEqual([INIT]);
    expect(first.alreadyApplied).toEqual([]);
    const tables = await withClient(
      db.url,
      async (c) => (await c.query(`SELECT to_regclass('vms') AS t`)).rows[0],
    );
    expect(tables).toEqual({ t: 'vms' });

    const second = await migrate({ databaseUrl: db.url });
    expect(second).toEqual({ applied: [], alreadyApplied: [INIT], unknown: [] });
    const count = await withClient(db.url, (c) =>
      c.query('SELECT count(*)::int AS n FROM _prisma_migrations'),
    );
    expect(count.rows[0]).toEqual({ n: 1 });
  });

  it("records _prisma_migrations exactly like Prisma's migrate deploy", async () => {
    const db = await emptyDatabase();
    const before = new Date();
    await migrate({ databaseUrl: db.url });
    const file = await readFile(path.join(DEFAULT_MIGRATIONS_DIR, INIT, 'migration.sql'));

    // The table has Prisma's columns, types, nullability and defaults.
    const columns = await withClient(db.url, async (c) =>
      (
        await c.query(
          `SELECT column_name, data_type, character_maximum_length, is_nullable, column_default
             FROM information_schema.columns WHERE table_name = '_prisma_migrations' ORDER BY ordinal_position`,
        )
      ).rows.map((r) => [
        r.column_name,
        r.data_type,
        r.character_maximum_length,
        r.is_nullable,
        r.column_default,
      ]),
    );
    expect(columns).toEqual([
      ['id', 'character varying', 36, 'NO', null],
      ['checksum', 'character varying', 64, 'NO', null],
      ['finished_at', 'timestamp with time zone', null, 'YES', null],
      ['migration_name', 'character varying', 255, 'NO', null],
      ['logs', 'text', null, 'YES', null],
      ['rolled_back_at', 'timestamp with time zone', null, 'YES', null],
      ['started_at', 'timestamp with time zone', null, 'NO', 'now()'],
      ['applied_steps_count', 'integer', null, 'NO', '0'],
    ]);
    const pkey = await withClient(db.url, (c) =>
      c.query(
        `SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
          WHERE i.indrelid = '_prisma_migrations'::regclass AND i.indisprimary`,
      ),
    );
    expect(pkey.rows).toEqual([{ attname: 'id' }]);

    const rows = await withClient(db.url, (c) => c.query('SELECT * FROM _prisma_migrations'));
    expect(rows.rows).toHaveLength(1);
    const row = rows.rows[0] as Record<string, unknown>;
    expect(row.id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect(row.checksum).toBe(createHash('sha256').update(file).digest('hex'));
    expect(row.migration_name).toBe(INIT);
    expect(row.logs).toBeNull();
    expect(row.rolled_back_at).toBeNull();
    expect(row.applied_steps_count).toBe(1);
    const started = row.started_at as Date;
    const finished = row.finished_at as Date;
    expect(started.getTime()).toBeGreaterThanOrEqual(before.getTime() - 1000);
    expect(finished.getTime()).toBeGreaterThanOrEqual(started.getTime());
  });

  it('lets replicas start together: concurrent runs apply each migration once', async () => {
    const db = await emptyDatabase();
    const runs = await Promise.all([1, 2, 3, 4].map(() => migrate({ databaseUrl: db.url })));
    expect(runs.map((r) => r.applied.length).sort()).toEqual([0, 0, 0, 1]);
    const count = await withClient(db.url, (c) =>
      c.query('SELECT count(*)::int AS n FROM _prisma_migrations'),
    );
    expect(count.rows[0]).toEqual({ n: 1 });
  });

  it('refuses to go on when an applied migration was changed, but accepts CRLF line endings', async () => {
    const db = await emptyDatabase();
    const dir = await copyMigrations();
    tempDirs.push(dir);
    await migrate({ databaseUrl: db.url, migrationsDir: dir });
    const file = path.join(dir, INIT, 'migration.sql');
    const original = await readFile(file, 'utf8');

    // git on Windows: the same script with CRLF is the same migration (Prisma agrees).
    await writeFile(file, original.replaceAll('\n', '\r\n'));
    expect((await migrate({ databaseUrl: db.url, migrationsDir: dir })).applied).toEqual([]);

    await writeFile(file, `${original}\n-- a harmless-looking edit\n`);
    const error = await expectMigrationError(
      migrate({ databaseUrl: db.url, migrationsDir: dir }),
      'MIGRATION_CHECKSUM_MISMATCH',
    );
    expect(error.migration).toBe(INIT);

    // A tampered history row is refused the same way, and nothing runs after the refusal.
    await writeFile(file, original);
    await mkdirMigration(dir, '20991231000000_later', 'CREATE TABLE later_table (id int);');
    await withClient(db.url, (c) =>
      c.query(`UPDATE _prisma_migrations SET checksum = $1`, [
        createHash('sha256').update('other').digest('hex'),
      ]),
    );
    await expectMigrationError(
      migrate({ databaseUrl: db.url, migrationsDir: dir }),
      'MIGRATION_CHECKSUM_MISMATCH',
    );
    const later = await withClient(db.url, (c) => c.query(`SELECT to_regclass('later_table') AS t`));
    expect(later.rows[0]).toEqual({ t: null });
  });

  it('rolls a failing migration back completely and records nothing', async () => {
    const db = await emptyDatabase();
    const dir = await copyMigrations();
    tempDirs.push(dir);
    await mkdirMigration(dir, '20991231000000_broken', 'CREATE TABLE half_done (id int);\nSELECT 1 / 0;');
    const error = await expectMigrationError(
      migrate({ databaseUrl: db.url, migrationsDir: dir }),
      'MIGRATION_FAILED',
    );
    expect(error.migration).toBe('20991231000000_broken');
    expect(error.message).toMatch(/division by zero/);
    const state = await withClient(db.url, async (c) => ({
      halfDone: (await c.query(`SELECT to_regclass('half_done') AS t`)).rows[0],
      names: (await c.query('SELECT migration_name FROM _prisma_migrations ORDER BY migration_name')).rows,
    }));
    // The first migration committed on its own; the broken one left no table and no row.
    expect(state).toEqual({ halfDone: { t: null }, names: [{ migration_name: INIT }] });
  });

  it('refuses a database with tables but no history, and a history with a failed migration', async () => {
    const stranger = await emptyDatabase();
    await withClient(stranger.url, (c) => c.query('CREATE TABLE someone_elses (id int)'));
    await expectMigrationError(migrate({ databaseUrl: stranger.url }), 'DATABASE_NOT_EMPTY');

    const failed = await emptyDatabase();
    await migrate({ databaseUrl: failed.url });
    // What `prisma migrate deploy` leaves after a failed script (finished_at NULL, logs set).
    await withClient(failed.url, (c) =>
      c.query(
        `INSERT INTO _prisma_migrations (id, checksum, migration_name, logs)
         VALUES ('00000000-0000-4000-8000-000000000000', $1, '20991231000000_failed', 'ERROR: boom')`,
        [createHash('sha256').update('x').digest('hex')],
      ),
    );
    const error = await expectMigrationError(
      migrate({ databaseUrl: failed.url }),
      'MIGRATION_HISTORY_FAILED',
    );
    expect(error.message).toContain('20991231000000_failed');
    expect(error.message).toContain('boom');
  });

  it('matches checksums the way Prisma does', () => {
    const [init] = readMigrations();
    expect(init?.name).toBe(INIT);
    expect(checksumMatches(init?.script ?? '', init?.checksum ?? '')).toBe(true);
    // Prisma's own test vector, and its tolerance for the unpadded hex of early versions.
    const hello = '2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824';
    expect(checksumMatches('hello', hello)).toBe(true);
    const unpadded = [...createHash('sha256').update('hello').digest()].map((b) => b.toString(16)).join('');
    expect(unpadded.length).toBeLessThan(64);
    expect(checksumMatches('hello', unpadded)).toBe(true);
    expect(checksumMatches('abc\n', createHash('sha256').update('abc').digest('hex'))).toBe(false);
  });
});

async function mkdirMigration(dir: string, name: string, sql: string): Promise<void> {
  const { mkdir } = await import('node:fs/promises');
  await mkdir(path.join(dir, name));
  await writeFile(path.join(dir, name, 'migration.sql'), sql);
}

interface ColumnInfo {
  table_name: string;
  column_name: string;
  data_type: string;
  udt_name: string;
  is_nullable: 'YES' | 'NO';
  column_default: string | null;
  character_maximum_length: number | null;
  datetime_precision: number | null;
}

/** The PostgreSQL type (udt_name, length/precision) Prisma maps a scalar field to. */
function expectedColumnType(
  field: DmmfField,
  enumDbNames: ReadonlyMap<string, string>,
): {
  udt: string;
  length?: number;
  precision?: number;
} {
  if (field.kind === 'enum') return { udt: enumDbNames.get(field.type) ?? field.type };
  const [native, args = []] = field.nativeType ?? [];
  const n = args[0] === undefined ? undefined : Number(args[0]);
  let scalar: { udt: string; length?: number; precision?: number };
  switch (native) {
    case 'Uuid':
      scalar = { udt: 'uuid' };
      break;
    case 'VarChar':
      scalar = n === undefined ? { udt: 'varchar' } : { udt: 'varchar', length: n };
      break;
    case 'Char':
      scalar = n === undefined ? { udt: 'bpchar' } : { udt: 'bpchar', length: n };
      break;
    case 'Timestamptz':
      scalar = { udt: 'timestamptz', precision: n ?? 3 };
      break;
    case undefined: {
      const defaults: Record<string, { udt: string; precision?: number }> = {
        String: { udt: 'text' },
        Int: { udt: 'int4' },
        BigInt: { udt: 'int8' },
        Float: { udt: 'float8' },
        Boolean: { udt: 'bool' },
        DateTime: { udt: 'timestamp', precision: 3 },
        Json: { udt: 'jsonb' },
      };
      const d = defaults[field.type];
      if (!d) throw new Error(`the drift test does not know Prisma type ${field.type} (${field.name})`);
      scalar = d;
      break;
    }
    default:
      throw new Error(`the drift test does not know native type @db.${native} (${field.name})`);
  }
  return field.isList ? { udt: `_${scalar.udt}` } : scalar;
}

describe('schema drift: prisma/schema.prisma against the migrated database', () => {
  let db: TestDatabase;
  let columns: ColumnInfo[];
  beforeAll(async () => {
    db = await createTestDatabase();
    columns = await withClient(
      db.url,
      async (c) =>
        (
          await c.query<ColumnInfo>(
            `SELECT table_name, column_name, data_type, udt_name, is_nullable, column_default,
                  character_maximum_length, datetime_precision
             FROM information_schema.columns WHERE table_schema = 'public'`,
          )
        ).rows,
    );
  });
  afterAll(async () => {
    await db?.drop();
  });

  const tableOf = (model: DmmfModel): string => model.dbName ?? model.name;
  const columnOf = (model: DmmfModel, fieldName: string): string => {
    const field = model.fields.find((f) => f.name === fieldName);
    if (!field) throw new Error(`${model.name}.${fieldName} is not a field`);
    return field.dbName ?? field.name;
  };
  const modelByName = new Map(datamodel.models.map((m) => [m.name, m]));

  it('has a table for every model and a model for every table', () => {
    const tables = new Set(columns.map((c) => c.table_name));
    tables.delete('_prisma_migrations');
    expect([...tables].sort()).toEqual(datamodel.models.map(tableOf).sort());
  });

  it('has a column of a compatible type and nullability for every field, and no column without a field', () => {
    const enumDbNames = new Map(datamodel.enums.map((e) => [e.name, e.dbName ?? e.name]));
    const problems: string[] = [];
    for (const model of datamodel.models) {
      const table = tableOf(model);
      const scalarFields = model.fields.filter((f) => f.kind === 'scalar' || f.kind === 'enum');
      const expectedColumns = new Set(scalarFields.map((f) => f.dbName ?? f.name));
      for (const column of columns.filter((c) => c.table_name === table)) {
        if (!expectedColumns.has(column.column_name))
          problems.push(`${table}.${column.column_name}: no field`);
      }
      for (const field of scalarFields) {
        const name = field.dbName ?? field.name;
        const column = columns.find((c) => c.table_name === table && c.column_name === name);
        if (!column) {
          problems.push(`${model.name}.${field.name}: no column ${table}.${name}`);
          continue;
        }
        const want = expectedColumnType(field, enumDbNames);
        if (column.udt_name !== want.udt)
          problems.push(`${table}.${name}: ${column.udt_name}, schema says ${want.udt}`);
        if (want.length !== undefined && column.character_maximum_length !== want.length) {
          problems.push(
            `${table}.${name}: length ${column.character_maximum_length}, schema says ${want.length}`,
          );
        }
        if (want.precision !== undefined && column.datetime_precision !== want.precision) {
          problems.push(
            `${table}.${name}: precision ${column.datetime_precision}, schema says ${want.precision}`,
          );
        }
        // Prisma renders scalar lists as nullable arrays; everything else must agree exactly.
        if (!field.isList && (column.is_nullable === 'NO') !== field.isRequired) {
          problems.push(
            `${table}.${name}: nullable=${column.is_nullable}, schema required=${field.isRequired}`,
          );
        }
        // Every default of this schema is a database default (now(), dbgenerated, literals).
        const hasDbDefault = column.column_default !== null;
        if (field.hasDefaultValue && !field.isUpdatedAt && !hasDbDefault) {
          problems.push(`${table}.${name}: the schema has a default, the column has none`);
        }
        if (!field.hasDefaultValue && hasDbDefault) {
          problems.push(`${table}.${name}: the column has default ${column.column_default}, the schema none`);
        }
      }
    }
    expect(problems).toEqual([]);
  });

  it('has every index and key of the schema, on the same columns', async () => {
    const indexes = await withClient(
      db.url,
      async (c) =>
        (
          await c.query<{
            table: string;
            columns: string[];
            unique: boolean;
            primary: boolean;
            partial: boolean;
          }>(
            `SELECT t.relname AS "table", i.indisunique AS "unique", i.indisprimary AS "primary",
                  i.indpred IS NOT NULL AS "partial",
                  array(SELECT a.attname FROM unnest(i.indkey) WITH ORDINALITY k(attnum, n)
                         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum ORDER BY k.n)::text[]
                    AS "columns"
             FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace s ON s.oid = t.relnamespace
            WHERE s.nspname = 'public'`,
          )
        ).rows,
    );
    const problems: string[] = [];
    for (const index of datamodel.indexes) {
      const model = modelByName.get(index.model);
      if (!model) throw new Error(`index on unknown model ${index.model}`);
      const table = tableOf(model);
      const cols = index.fields.map((f) => columnOf(model, f.name));
      const found = indexes.find(
        (i) =>
          i.table === table &&
          !i.partial &&
          i.columns.join(',') === cols.join(',') &&
          (index.type === 'id' ? i.primary : index.type === 'unique' ? i.unique && !i.primary : true),
      );
      if (!found) problems.push(`${index.type} index on ${table}(${cols.join(', ')}) is missing`);
    }
    expect(problems).toEqual([]);
  });

  it('has every relation as a foreign key with the schema’s ON DELETE action', async () => {
    const fks = await withClient(
      db.url,
      async (c) =>
        (
          await c.query<{
            table: string;
            columns: string[];
            target: string;
            targetColumns: string[];
            onDelete: string;
          }>(
            `SELECT t.relname AS "table", r.relname AS "target", con.confdeltype AS "onDelete",
                  array(SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY k(attnum, n)
                         JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum ORDER BY k.n)::text[]
                    AS "columns",
                  array(SELECT a.attname FROM unnest(con.confkey) WITH ORDINALITY k(attnum, n)
                         JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.attnum ORDER BY k.n)::text[]
                    AS "targetColumns"
             FROM pg_constraint con JOIN pg_class t ON t.oid = con.conrelid JOIN pg_class r ON r.oid = con.confrelid
            WHERE con.contype = 'f'`,
          )
        ).rows,
    );
    const actionCode = { Cascade: 'c', Restrict: 'r', NoAction: 'a', SetNull: 'n', SetDefault: 'd' } as const;
    const expected: string[] = [];
    for (const model of datamodel.models) {
      for (const field of model.fields) {
        if (field.kind !== 'object' || !field.relationFromFields?.length) continue;
        const target = modelByName.get(field.type);
        if (!target) throw new Error(`relation to unknown model ${field.type}`);
        const onDelete = field.relationOnDelete ?? (field.isRequired ? 'Restrict' : 'SetNull');
        expected.push(
          `${tableOf(model)}(${field.relationFromFields.map((f) => columnOf(model, f)).join(',')}) -> ` +
            `${tableOf(target)}(${(field.relationToFields ?? []).map((f) => columnOf(target, f)).join(',')}) ` +
            `on delete ${actionCode[onDelete]}`,
        );
      }
    }
    const actual = fks.map(
      (fk) =>
        `${fk.table}(${fk.columns.join(',')}) -> ${fk.target}(${fk.targetColumns.join(',')}) on delete ${fk.onDelete}`,
    );
    expect(actual.sort()).toEqual(expected.sort());
  });

  it('has every enum with the same values, and VmState is vmm-core’s state table', async () => {
    const values = await withClient(
      db.url,
      async (c) =>
        (
          await c.query<{ type: string; labels: string[] }>(
            `SELECT t.typname AS "type", array_agg(e.enumlabel ORDER BY e.enumsortorder)::text[] AS labels
             FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid GROUP BY t.typname`,
          )
        ).rows,
    );
    const actual = Object.fromEntries(values.map((v) => [v.type, v.labels]));
    const expected = Object.fromEntries(
      datamodel.enums.map((e) => [e.dbName ?? e.name, e.values.map((v) => v.dbName ?? v.name)]),
    );
    expect(actual).toEqual(expected);
    expect(expected.vm_state).toEqual([...VM_STATES]);
  });
});

describe('PrismaService and the VM version (ETag)', () => {
  let db: TestDatabase;
  let vmId: string;
  beforeAll(async () => {
    db = await createTestDatabase();
    const project = await db.prisma.project.create({ data: { name: 'etag' } });
    const flavor = await db.prisma.flavor.create({
      data: { name: 'tiny', vcpus: 1, memoryMib: 256, diskGib: 1 },
    });
    const image = await db.prisma.image.create({
      data: { name: 'hangar-tiny', pool: 'images', kernelPath: 'k' },
    });
    const vm = await db.prisma.vm.create({
      data: {
        projectId: project.id,
        name: 'vm-1',
        flavorId: flavor.id,
        imageId: image.id,
        vcpus: 1,
        memoryMib: 256,
        diskGib: 1,
      },
    });
    vmId = vm.id;
  });
  afterAll(async () => {
    await db?.drop();
  });

  it('starts at version 1 and bumps it on every change, whoever writes', async () => {
    const start = await db.prisma.vm.findUniqueOrThrow({ where: { id: vmId } });
    expect(start.version).toBe(1);
    const renamed = await updateVm(db.prisma, vmId, 1, { name: 'vm-renamed' });
    expect(renamed).toMatchObject({ name: 'vm-renamed', version: 2 });
    expect(renamed.updatedAt.getTime()).toBeGreaterThanOrEqual(start.updatedAt.getTime());
    // Raw SQL bypasses Prisma entirely; the trigger still bumps the version.
    await db.prisma.$executeRaw`UPDATE vms SET labels = '{"tier":"web"}' WHERE id = ${vmId}::uuid`;
    expect((await db.prisma.vm.findUniqueOrThrow({ where: { id: vmId } })).version).toBe(3);
    // Even a caller that tries to set the version cannot skip or rewind it.
    await db.prisma.$executeRaw`UPDATE vms SET version = 1, user_data = 'x' WHERE id = ${vmId}::uuid`;
    expect((await db.prisma.vm.findUniqueOrThrow({ where: { id: vmId } })).version).toBe(4);
    // Writing the same values changes nothing, so the representation and its ETag stay.
    const same = await updateVm(db.prisma, vmId, 4, { name: 'vm-renamed' });
    expect(same.version).toBe(4);
  });

  it('refuses a stale expected version, and lets exactly one of two racing writers win', async () => {
    const current = (await db.prisma.vm.findUniqueOrThrow({ where: { id: vmId } })).version;
    const stale = await updateVm(db.prisma, vmId, current - 1, { name: 'lost-update' }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(stale).toBeInstanceOf(VersionConflictError);
    expect(stale).toMatchObject({
      code: 'ETAG_MISMATCH',
      expectedVersion: current - 1,
      currentVersion: current,
    });

    const results = await Promise.allSettled(
      ['writer-a', 'writer-b', 'writer-c'].map((name) => updateVm(db.prisma, vmId, current, { name })),
    );
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
    for (const r of results.filter((x) => x.status === 'rejected')) {
      expect((r as PromiseRejectedResult).reason).toBeInstanceOf(VersionConflictError);
    }
    expect((await db.prisma.vm.findUniqueOrThrow({ where: { id: vmId } })).version).toBe(current + 1);
  });

  it('treats a missing or deleted VM as not found', async () => {
    await expect(
      updateVm(db.prisma, '00000000-0000-4000-8000-000000000000', 1, { name: 'x' }),
    ).rejects.toBeInstanceOf(VmNotFoundError);
    await updateVm(db.prisma, vmId, undefined, { deletedAt: new Date(), observedState: 'DELETED' });
    await expect(updateVm(db.prisma, vmId, undefined, { name: 'ghost' })).rejects.toMatchObject({
      code: 'VM_NOT_FOUND',
    });
  });

  it('is a Nest provider that connects on init and disconnects on close', async () => {
    const moduleRef = await Test.createTestingModule({
      imports: [PrismaModule.forRootAsync({ useFactory: () => ({ url: db.url, poolMax: 2 }) })],
    }).compile();
    await moduleRef.init();
    const prisma = moduleRef.get(PrismaService);
    expect(prisma.databaseUrl).toBe(db.url);
    expect(await prisma.project.count()).toBe(1);
    await moduleRef.close();
    // Closed means disconnected: none of its server sessions remain.
    await eventually(
      async () => {
        const sessions = await db.prisma.$queryRaw<{ n: number }[]>`
        SELECT count(*)::int AS n FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = 'hangar-api'`;
        expect(sessions[0]?.n).toBe(0);
        return true;
      },
      { timeoutMs: 5000, what: 'the closed service to leave the database' },
    );
  });
});
