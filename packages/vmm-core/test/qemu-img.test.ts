import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  convertImage,
  createImage,
  createOverlay,
  createSnapshot,
  deleteSnapshot,
  imageChain,
  imageInfo,
  listSnapshots,
  resizeImage,
  revertSnapshot,
} from '../src/disk/index.js';
import { VmmError } from '../src/errors.js';
import { runCommand } from '../src/util/exec.js';

const MiB = 1024 * 1024;
let dir: string;
const children: ChildProcess[] = [];

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'hangar-test-'));
});

afterEach(async () => {
  for (const child of children.splice(0)) child.kill('SIGKILL');
  await rm(dir, { recursive: true, force: true });
});

async function failure(promise: Promise<unknown>): Promise<VmmError> {
  try {
    await promise;
  } catch (err) {
    if (err instanceof VmmError) return err;
    throw err;
  }
  throw new Error('expected a VmmError');
}

/** Runs qemu-io commands on an image; throws if any fails (a pattern mismatch included). */
async function qemuIo(path: string, format: string, ...commands: string[]): Promise<string> {
  const args = ['-f', format];
  for (const c of commands) args.push('-c', c);
  const { stdout } = await runCommand('qemu-io', [...args, path], { timeoutMs: 30_000 });
  if (/failed/i.test(stdout)) throw new Error(`qemu-io: ${stdout}`);
  return stdout;
}

async function holdsPattern(path: string, format: string, pattern: string): Promise<boolean> {
  return qemuIo(path, format, `read -P ${pattern} 0 4k`).then(
    () => true,
    () => false,
  );
}

describe('createImage / imageInfo', () => {
  it('creates qcow2 and raw images of the requested size', async () => {
    const qcow2 = join(dir, 'a.qcow2');
    const raw = join(dir, 'a.raw');
    await createImage(qcow2, { format: 'qcow2', sizeBytes: 64 * MiB });
    await createImage(raw, { format: 'raw', sizeBytes: 8 * MiB });

    const q = await imageInfo(qcow2);
    expect(q).toMatchObject({ filename: qcow2, format: 'qcow2', virtualSizeBytes: 64 * MiB, snapshots: [] });
    expect(q.backingFile).toBeUndefined();
    expect(q.dirty).toBe(false);
    expect(q.actualSizeBytes).toBeGreaterThan(0);
    expect(q.actualSizeBytes).toBeLessThan(64 * MiB);

    expect(await imageInfo(raw)).toMatchObject({ format: 'raw', virtualSizeBytes: 8 * MiB });
    expect((await stat(raw)).size).toBe(8 * MiB);
  });

  it('refuses to overwrite an existing file', async () => {
    const path = join(dir, 'keep.raw');
    await writeFile(path, 'precious');
    const err = await failure(createImage(path, { format: 'raw', sizeBytes: MiB }));
    expect(err.code).toBe('DISK_ERROR');
    expect(err.message).toContain('already exists');
    expect((await stat(path)).size).toBe('precious'.length);
  });

  it.each([0, -1, 1.5, Number.NaN, 2 ** 60])('refuses size %s', async (size) => {
    const err = await failure(createImage(join(dir, 'x.qcow2'), { format: 'qcow2', sizeBytes: size }));
    expect(err.code).toBe('INVALID_SPEC');
    expect(await readdir(dir)).toEqual([]);
  });

  it('reads a raw disk holding a qcow2 header as raw when told the format', async () => {
    // A guest can write anything into its raw disk, a qcow2 header with a backing file included.
    const path = join(dir, 'guest.img');
    await createImage(path, { format: 'qcow2', sizeBytes: 64 * MiB });
    expect((await imageInfo(path)).format).toBe('qcow2');
    const asRaw = await imageInfo(path, { format: 'raw' });
    expect(asRaw.format).toBe('raw');
    // raw images are sized in whole 512-byte sectors
    expect(asRaw.virtualSizeBytes).toBe(Math.ceil((await stat(path)).size / 512) * 512);
  });

  it('reports a missing file as DISK_ERROR with qemu-img message', async () => {
    const missing = join(dir, 'missing.qcow2');
    const err = await failure(imageInfo(missing));
    expect(err.code).toBe('DISK_ERROR');
    expect(err.message).toContain(missing);
    expect(err.message).toContain('No such file or directory');
  });

  it('reads an image held open by another process only with forceShare', async () => {
    const path = join(dir, 'busy.qcow2');
    await createImage(path, { format: 'qcow2', sizeBytes: MiB });
    // qemu-io in interactive mode keeps the image open (and write-locked) while stdin stays open.
    const holder = spawn('qemu-io', ['-f', 'qcow2', path], { stdio: ['pipe', 'ignore', 'ignore'] });
    children.push(holder);
    let locked: VmmError | undefined;
    for (let i = 0; i < 100 && locked === undefined; i++) {
      locked = await imageInfo(path).then(
        () => undefined,
        (err: unknown) => (err instanceof VmmError ? err : undefined),
      );
      if (locked === undefined) await new Promise((r) => setTimeout(r, 50));
    }
    expect(locked?.code).toBe('DISK_ERROR');
    expect(locked?.message).toContain('lock');
    expect((await imageInfo(path, { forceShare: true })).format).toBe('qcow2');
    const snapshotErr = await failure(createSnapshot(path, 'while-running'));
    expect(snapshotErr.code).toBe('DISK_ERROR');
  });
});

describe('createOverlay / imageChain', () => {
  it('creates an overlay whose reads fall through to the base', async () => {
    const base = join(dir, 'base.qcow2');
    const overlay = join(dir, 'vm.qcow2');
    await createImage(base, { format: 'qcow2', sizeBytes: 16 * MiB });
    await qemuIo(base, 'qcow2', 'write -P 0x41 0 4k');
    await createOverlay(overlay, { backingFile: base, backingFormat: 'qcow2' });

    const info = await imageInfo(overlay);
    expect(info).toMatchObject({
      format: 'qcow2',
      virtualSizeBytes: 16 * MiB,
      backingFile: base,
      fullBackingFile: base,
      backingFormat: 'qcow2',
    });
    const chain = await imageChain(overlay);
    expect(chain.map((i) => [i.filename, i.format, i.backingFile])).toEqual([
      [overlay, 'qcow2', base],
      [base, 'qcow2', undefined],
    ]);
    expect(await holdsPattern(overlay, 'qcow2', '0x41')).toBe(true);

    // Guest writes land in the overlay only.
    await qemuIo(overlay, 'qcow2', 'write -P 0x42 0 4k');
    expect(await holdsPattern(overlay, 'qcow2', '0x42')).toBe(true);
    expect(await holdsPattern(base, 'qcow2', '0x41')).toBe(true);
  });

  it('can be larger than a raw base', async () => {
    const base = join(dir, 'base.raw');
    await createImage(base, { format: 'raw', sizeBytes: 4 * MiB });
    await createOverlay(join(dir, 'big.qcow2'), {
      backingFile: base,
      backingFormat: 'raw',
      sizeBytes: 32 * MiB,
    });
    const chain = await imageChain(join(dir, 'big.qcow2'));
    expect(chain.map((i) => [i.format, i.virtualSizeBytes])).toEqual([
      ['qcow2', 32 * MiB],
      ['raw', 4 * MiB],
    ]);
  });

  it('refuses a relative backing path', async () => {
    const err = await failure(
      createOverlay(join(dir, 'o.qcow2'), { backingFile: 'base.qcow2', backingFormat: 'qcow2' }),
    );
    expect(err.code).toBe('INVALID_SPEC');
  });

  it('fails with DISK_ERROR when the base is missing', async () => {
    const err = await failure(
      createOverlay(join(dir, 'o.qcow2'), { backingFile: join(dir, 'nope.qcow2'), backingFormat: 'qcow2' }),
    );
    expect(err.code).toBe('DISK_ERROR');
    expect(err.message).toContain('nope.qcow2');
  });
});

describe('resizeImage', () => {
  it('grows a qcow2 image and keeps its data', async () => {
    const path = join(dir, 'grow.qcow2');
    await createImage(path, { format: 'qcow2', sizeBytes: 8 * MiB });
    await qemuIo(path, 'qcow2', 'write -P 0x41 0 4k');
    await resizeImage(path, 24 * MiB);
    expect((await imageInfo(path)).virtualSizeBytes).toBe(24 * MiB);
    expect(await holdsPattern(path, 'qcow2', '0x41')).toBe(true);
  });

  it('refuses to shrink unless asked', async () => {
    const path = join(dir, 'shrink.raw');
    await createImage(path, { format: 'raw', sizeBytes: 8 * MiB });
    const err = await failure(resizeImage(path, 4 * MiB));
    expect(err.code).toBe('INVALID_SPEC');
    expect((await imageInfo(path)).virtualSizeBytes).toBe(8 * MiB);
    await resizeImage(path, 4 * MiB, { shrink: true });
    expect((await imageInfo(path)).virtualSizeBytes).toBe(4 * MiB);
  });

  it.each([0, -MiB, 1.5 * 1024 + 0.5])('refuses size %s', async (size) => {
    const path = join(dir, 'r.qcow2');
    await createImage(path, { format: 'qcow2', sizeBytes: MiB });
    expect((await failure(resizeImage(path, size))).code).toBe('INVALID_SPEC');
  });
});

describe('internal snapshots', () => {
  it('round-trips data through create, revert and delete', async () => {
    const path = join(dir, 'snap.qcow2');
    await createImage(path, { format: 'qcow2', sizeBytes: 8 * MiB });
    await qemuIo(path, 'qcow2', 'write -P 0x41 0 4k');

    await createSnapshot(path, 'before-upgrade');
    const listed = await listSnapshots(path);
    expect(listed).toHaveLength(1);
    expect(listed[0]).toMatchObject({ name: 'before-upgrade', vmStateSizeBytes: 0 });
    expect(listed[0]?.dateSec).toBeGreaterThan(Date.now() / 1000 - 3600);

    await qemuIo(path, 'qcow2', 'write -P 0x42 0 4k');
    expect(await holdsPattern(path, 'qcow2', '0x42')).toBe(true);

    await revertSnapshot(path, 'before-upgrade');
    expect(await holdsPattern(path, 'qcow2', '0x41')).toBe(true);
    expect(await holdsPattern(path, 'qcow2', '0x42')).toBe(false);

    await deleteSnapshot(path, 'before-upgrade');
    expect(await listSnapshots(path)).toEqual([]);
    expect(await holdsPattern(path, 'qcow2', '0x41')).toBe(true);
  });

  it('refuses a duplicate name', async () => {
    const path = join(dir, 'dup.qcow2');
    await createImage(path, { format: 'qcow2', sizeBytes: MiB });
    await createSnapshot(path, 's1');
    const err = await failure(createSnapshot(path, 's1'));
    expect(err.code).toBe('DISK_ERROR');
    expect((await listSnapshots(path)).map((s) => s.name)).toEqual(['s1']);
  });

  it('fails with DISK_ERROR for a snapshot that does not exist', async () => {
    const path = join(dir, 'none.qcow2');
    await createImage(path, { format: 'qcow2', sizeBytes: MiB });
    await createSnapshot(path, 'real');
    for (const op of [revertSnapshot, deleteSnapshot]) {
      const err = await failure(op(path, 'ghost'));
      expect(err.code).toBe('DISK_ERROR');
      expect(err.message).toContain('ghost');
    }
    expect((await listSnapshots(path)).map((s) => s.name)).toEqual(['real']);
  });

  it('fails with DISK_ERROR on a raw image and on a missing file', async () => {
    const raw = join(dir, 'plain.raw');
    await createImage(raw, { format: 'raw', sizeBytes: MiB });
    const rawErr = await failure(createSnapshot(raw, 'nope'));
    expect(rawErr.code).toBe('DISK_ERROR');
    expect(rawErr.message).toContain('need a qcow2 image');
    expect((await failure(createSnapshot(join(dir, 'missing.qcow2'), 'x'))).code).toBe('DISK_ERROR');
  });

  it.each(['', '-leading-dash', '.hidden', 'has space', 'semi;colon', 'a/b', 'x'.repeat(65), '42', 'name\n'])(
    'refuses snapshot name %j',
    async (name) => {
      const path = join(dir, 'names.qcow2');
      await createImage(path, { format: 'qcow2', sizeBytes: MiB });
      for (const op of [createSnapshot, revertSnapshot, deleteSnapshot]) {
        expect((await failure(op(path, name))).code).toBe('INVALID_SPEC');
      }
      expect(await listSnapshots(path)).toEqual([]);
    },
  );

  it('accepts names up to 64 characters', async () => {
    const path = join(dir, 'long.qcow2');
    await createImage(path, { format: 'qcow2', sizeBytes: MiB });
    const name = `a${'b.-_'.repeat(15)}xyz`;
    expect(name).toHaveLength(64);
    await createSnapshot(path, name);
    expect((await listSnapshots(path)).map((s) => s.name)).toEqual([name]);
  });
});

describe('convertImage', () => {
  it('flattens an overlay into a standalone image', async () => {
    const base = join(dir, 'base.qcow2');
    const overlay = join(dir, 'vm.qcow2');
    const flat = join(dir, 'flat.raw');
    await createImage(base, { format: 'qcow2', sizeBytes: 4 * MiB });
    await qemuIo(base, 'qcow2', 'write -P 0x41 0 4k');
    await createOverlay(overlay, { backingFile: base, backingFormat: 'qcow2' });
    await qemuIo(overlay, 'qcow2', 'write -P 0x43 64k 4k');

    await convertImage(overlay, flat, { outFormat: 'raw' });
    const chain = await imageChain(flat);
    expect(chain).toHaveLength(1);
    expect(chain[0]).toMatchObject({ format: 'raw', virtualSizeBytes: 4 * MiB, backingFile: undefined });
    await qemuIo(flat, 'raw', 'read -P 0x41 0 4k', 'read -P 0x43 64k 4k');
  });

  it('refuses to overwrite the destination and reports a missing source', async () => {
    const src = join(dir, 'src.qcow2');
    const dst = join(dir, 'dst.qcow2');
    await createImage(src, { format: 'qcow2', sizeBytes: MiB });
    await writeFile(dst, 'x');
    expect((await failure(convertImage(src, dst, { outFormat: 'qcow2' }))).code).toBe('DISK_ERROR');
    const missing = await failure(
      convertImage(join(dir, 'none.qcow2'), join(dir, 'out.qcow2'), { outFormat: 'raw' }),
    );
    expect(missing.code).toBe('DISK_ERROR');
    expect(missing.message).toContain('No such file or directory');
  });
});
