import { randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';

/** Folder inside each pool that holds shared-storage proof tokens. */
export const STORAGE_TOKEN_DIR = '.hangar-storage-tokens';
/** How long a token lives; the conductor checks it within seconds of writing it. */
export const STORAGE_TOKEN_TTL_MS = 5 * 60_000;

const TOKEN_PATH = new RegExp(`^${STORAGE_TOKEN_DIR.replace('.', '\\.')}/[0-9a-f]{32}\\.token$`);

/** True when `relative` is a path {@link writeStorageToken} could have returned. */
export function isStorageTokenPath(relative: string): boolean {
  return TOKEN_PATH.test(relative);
}

/** Writes a random token into the pool; returns its pool-relative path and content. */
export async function writeStorageToken(poolPath: string): Promise<{ path: string; token: string }> {
  const dir = path.join(poolPath, STORAGE_TOKEN_DIR);
  await mkdir(dir, { recursive: true, mode: 0o755 });
  const name = `${randomBytes(16).toString('hex')}.token`;
  const token = randomBytes(32).toString('hex');
  await writeFile(path.join(dir, name), token, { mode: 0o644, flag: 'wx' });
  return { path: `${STORAGE_TOKEN_DIR}/${name}`, token };
}

/** Reads a token another host wrote; `reason` says why the pool does not look shared. */
export async function checkStorageToken(
  poolPath: string,
  relative: string,
  token: string,
): Promise<{ shared: boolean; reason: string }> {
  let content: string;
  try {
    content = await readFile(path.join(poolPath, relative), 'utf8');
  } catch {
    return { shared: false, reason: 'token file not found' };
  }
  return content === token ? { shared: true, reason: '' } : { shared: false, reason: 'token differs' };
}

/** Removes one token file (the writer's cleanup after the TTL). */
export async function removeStorageToken(poolPath: string, relative: string): Promise<void> {
  if (isStorageTokenPath(relative)) await rm(path.join(poolPath, relative), { force: true });
}

/** Removes tokens older than the TTL (left by an agent that stopped before its timer fired). */
export async function sweepStorageTokens(poolPath: string, now = Date.now()): Promise<number> {
  const dir = path.join(poolPath, STORAGE_TOKEN_DIR);
  let removed = 0;
  let entries: string[];
  try {
    entries = await readdir(dir);
  } catch {
    return 0;
  }
  for (const entry of entries) {
    if (!isStorageTokenPath(`${STORAGE_TOKEN_DIR}/${entry}`)) continue;
    const file = path.join(dir, entry);
    try {
      if (now - (await stat(file)).mtimeMs > STORAGE_TOKEN_TTL_MS) {
        await rm(file, { force: true });
        removed++;
      }
    } catch {
      // another host's sweep got there first
    }
  }
  return removed;
}
