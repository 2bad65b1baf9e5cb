import path from 'node:path';
import { VmmError } from '../errors.js';
import type { PoolPath } from '../spec/vm-spec.js';
import { VM_ID_PATTERN } from '../spec/vm-spec.js';

/** Linux's sun_path limit (108 bytes including the terminating NUL). */
const MAX_UNIX_SOCKET_PATH = 107;

/** Joins `relative` under `root`, refusing anything that would resolve outside it. */
export function resolveInside(root: string, relative: string, what: string): string {
  const absRoot = path.resolve(root);
  const resolved = path.resolve(absRoot, relative);
  if (resolved !== absRoot && !resolved.startsWith(absRoot + path.sep)) {
    throw new VmmError('PATH_ESCAPE', `${what} "${relative}" escapes ${absRoot}`, {
      details: { root: absRoot, path: relative },
    });
  }
  return resolved;
}

/** Files of one VM in its runtime folder. */
export interface VmRuntimePaths {
  dir: string;
  manifest: string;
  pidfile: string;
  qmpSocket: string;
  consoleSocket: string;
  serialLog: string;
  shellSocket: string;
  seed: string;
}

export function vmRuntimePaths(runtimeDir: string, vmId: string): VmRuntimePaths {
  if (!VM_ID_PATTERN.test(vmId)) {
    throw new VmmError('INVALID_SPEC', `"${vmId}" is not a valid VM id`, { details: { id: vmId } });
  }
  const dir = resolveInside(path.join(runtimeDir, 'vms'), vmId, 'VM id');
  const paths: VmRuntimePaths = {
    dir,
    manifest: path.join(dir, 'vm.json'),
    pidfile: path.join(dir, 'qemu.pid'),
    qmpSocket: path.join(dir, 'qmp.sock'),
    consoleSocket: path.join(dir, 'console.sock'),
    serialLog: path.join(dir, 'serial.log'),
    shellSocket: path.join(dir, 'shell.sock'),
    seed: path.join(dir, 'seed.img'),
  };
  for (const sock of [paths.qmpSocket, paths.consoleSocket, paths.shellSocket]) {
    if (Buffer.byteLength(sock) > MAX_UNIX_SOCKET_PATH) {
      throw new VmmError(
        'INVALID_SPEC',
        `runtime folder ${runtimeDir} is too deep: ${sock} exceeds the ${MAX_UNIX_SOCKET_PATH}-byte unix socket limit`,
      );
    }
  }
  return paths;
}

export interface PoolMap {
  [name: string]: { path: string; shared: boolean } | undefined;
}

/** Resolves a pool-relative file, refusing unknown pools and paths that leave the pool. */
export function resolvePoolPath(pools: PoolMap, ref: PoolPath): string {
  const pool = pools[ref.pool];
  if (!pool) {
    throw new VmmError('INVALID_SPEC', `unknown storage pool "${ref.pool}"`, {
      details: { pool: ref.pool, known: Object.keys(pools) },
    });
  }
  return resolveInside(pool.path, ref.path, `path in pool ${ref.pool}`);
}

/**
 * Paths handed to QEMU's `exec:` migration URI go through /bin/sh inside QEMU, so only a plain
 * character set is accepted.
 */
export function assertPlainPath(file: string): void {
  if (!path.isAbsolute(file) || !/^[A-Za-z0-9._/+-]+$/.test(file)) {
    throw new VmmError('INVALID_SPEC', `"${file}" must be an absolute path of letters, digits and ._/+-`);
  }
}
