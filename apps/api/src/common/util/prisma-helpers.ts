import { Prisma } from '../../gen/prisma/client.js';

/** A Prisma client inside `$transaction(async (tx) => …)` (or the client itself). */
export type Db = Prisma.TransactionClient;

function prismaCode(error: unknown): string | undefined {
  if (error === null || typeof error !== 'object') return undefined;
  const { name, code } = error as { name?: unknown; code?: unknown };
  return name === 'PrismaClientKnownRequestError' && typeof code === 'string' ? code : undefined;
}

/** A unique index refused the write (P2002): a name is taken. */
export function isUniqueViolation(error: unknown): boolean {
  return prismaCode(error) === 'P2002';
}

/** A foreign key refused the write (P2003): other rows still refer to this one. */
export function isForeignKeyViolation(error: unknown): boolean {
  return prismaCode(error) === 'P2003';
}

/** Tables whose rows a read-check-write locks (`lockRow`). */
export type LockableTable = 'projects' | 'hosts' | 'flavors' | 'images' | 'api_keys' | 'join_tokens';

/**
 * `SELECT … FOR UPDATE` on one row inside a transaction: concurrent read-check-writes of the
 * same row (If-Match, "delete when empty") run one after the other. False when the row is absent.
 */
export async function lockRow(tx: Db, table: LockableTable, id: string): Promise<boolean> {
  const rows = await tx.$queryRaw<{ id: string }[]>(
    Prisma.sql`SELECT id::text FROM ${Prisma.raw(`"${table}"`)} WHERE id = ${id}::uuid FOR UPDATE`,
  );
  return rows.length > 0;
}
