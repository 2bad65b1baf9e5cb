import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';

/** What the agent keeps about its registration between restarts. */
interface HostIdState {
  version: 1;
  hostId: string;
  updatedAt: string;
}

/**
 * Reads the host id an earlier run got from the gateway. A missing file means a first join;
 * an unreadable one is reported through `onCorrupt` and treated as missing, because refusing to
 * start would leave the host unmanaged while a fresh Register only costs a new id.
 */
export async function loadHostId(
  file: string,
  onCorrupt?: (err: unknown) => void,
): Promise<string | undefined> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    onCorrupt?.(err);
    return undefined;
  }
  try {
    const parsed = JSON.parse(text) as Partial<HostIdState>;
    if (typeof parsed.hostId === 'string' && parsed.hostId.length > 0) return parsed.hostId;
    onCorrupt?.(new Error(`${file} holds no hostId`));
  } catch (err) {
    onCorrupt?.(err);
  }
  return undefined;
}

/** Persists the host id atomically (write + rename), so a crash mid-write never loses the old id. */
export async function saveHostId(file: string, hostId: string): Promise<void> {
  await mkdir(path.dirname(file), { recursive: true });
  const state: HostIdState = { version: 1, hostId, updatedAt: new Date().toISOString() };
  const tmp = `${file}.${process.pid}.tmp`;
  await writeFile(tmp, `${JSON.stringify(state, null, 2)}\n`, { mode: 0o644 });
  await rename(tmp, file);
}
