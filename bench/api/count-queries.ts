/**
 * bench/api `--count-queries`: a preload (`node --import`) for the api and worker processes that
 * counts the SQL statements node-postgres sends (Prisma's adapter and raw queries alike), by kind
 * (`SELECT vms`, `INSERT events`, `BEGIN`, …), and writes them as JSON to
 * `$BENCH_QUERY_COUNTS_FILE` when the process exits. Without that variable it does nothing.
 */
import { writeFileSync } from 'node:fs';
import pg from 'pg';

/** `SELECT vms`, `SELECT vms FOR UPDATE`, `INSERT events`, `BEGIN`, … from a statement's text. */
export function describeSql(text: string): string {
  const sql = text.replace(/\s+/g, ' ').trim();
  const word = /^(\w+)/.exec(sql)?.[1]?.toUpperCase() ?? '?';
  const table = (re: RegExp) => re.exec(sql)?.[1] ?? '?';
  const name = String.raw`(?:"?public"?\.)?"?(\w+)"?`;
  switch (word) {
    case 'INSERT':
      return `INSERT ${table(new RegExp(`^INSERT INTO ${name}`, 'i'))}`;
    case 'UPDATE':
      return `UPDATE ${table(new RegExp(`^UPDATE ${name}`, 'i'))}`;
    case 'DELETE':
      return `DELETE ${table(new RegExp(`^DELETE FROM ${name}`, 'i'))}`;
    case 'SELECT': {
      const from = new RegExp(`\\bFROM ${name}`, 'i').exec(sql)?.[1];
      const lock = /\bFOR UPDATE\b/i.test(sql) ? ' FOR UPDATE' : '';
      return from ? `SELECT ${from}${lock}` : `SELECT (no table)`;
    }
    default:
      return word; // BEGIN, COMMIT, SAVEPOINT, RELEASE, ROLLBACK, …
  }
}

const file = process.env.BENCH_QUERY_COUNTS_FILE;
if (file) {
  const counts = new Map<string, number>();
  const query = pg.Client.prototype.query as (this: pg.Client, ...args: unknown[]) => unknown;
  // Patched on the prototype every pool client shares; the original does the work.
  (pg.Client.prototype as unknown as { query: (...args: unknown[]) => unknown }).query = function (
    this: pg.Client,
    ...args: unknown[]
  ) {
    const first = args[0];
    const text =
      typeof first === 'string'
        ? first
        : typeof (first as { text?: unknown } | undefined)?.text === 'string'
          ? (first as { text: string }).text
          : '?';
    const kind = describeSql(text);
    counts.set(kind, (counts.get(kind) ?? 0) + 1);
    return query.apply(this, args);
  };
  process.on('exit', () => {
    writeFileSync(file, JSON.stringify(Object.fromEntries(counts)));
  });
}
