import { mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { buildNoCloudSeed, readNoCloudSeed } from '../src/cloud-init/index.js';
import { VmmError } from '../src/errors.js';
import { runCommand } from '../src/util/exec.js';

let dir: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'hangar-test-'));
});

afterEach(async () => {
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

const userData =
  '#cloud-config\nusers:\n  - name: hangar\n    ssh_authorized_keys: ["ssh-ed25519 AAAA test"]\n';
const networkConfig = 'version: 2\nethernets:\n  eth0:\n    dhcp4: true\n';

describe('buildNoCloudSeed', () => {
  it('writes a vfat image labelled CIDATA that reads back as written', async () => {
    const path = join(dir, 'seed.img');
    await buildNoCloudSeed(path, {
      instanceId: 'iid-vm-1',
      hostname: 'web-01.example.org',
      userData,
      networkConfig,
    });

    const { stdout: blkid } = await runCommand('blkid', ['-o', 'export', path]);
    expect(blkid).toMatch(/^LABEL=CIDATA$/m);
    expect(blkid).toMatch(/^TYPE=vfat$/m);
    const { stdout: file } = await runCommand('file', ['-b', path]);
    expect(file).toContain('label: "CIDATA');
    expect(file).toContain('FAT');

    const seed = await readNoCloudSeed(path);
    expect(seed).toEqual({
      label: 'CIDATA',
      metaData: 'instance-id: "iid-vm-1"\nlocal-hostname: "web-01.example.org"\n',
      userData,
      networkConfig,
    });
    const { stdout: listing } = await runCommand('mdir', ['-b', '-i', path, '::/'], {
      env: { MTOOLS_SKIP_CHECK: '1' },
    });
    expect(listing.split('\n').filter(Boolean).sort()).toEqual([
      '::/meta-data',
      '::/network-config',
      '::/user-data',
    ]);
  });

  it('writes a default user-data and no network-config when none is given', async () => {
    const path = join(dir, 'seed.img');
    await buildNoCloudSeed(path, { instanceId: '1234', hostname: 'a' });
    const seed = await readNoCloudSeed(path);
    // quoted so YAML keeps "1234" a string
    expect(seed.metaData).toBe('instance-id: "1234"\nlocal-hostname: "a"\n');
    expect(seed.userData).toBe('#cloud-config\n{}\n');
    expect(seed.networkConfig).toBeUndefined();
  });

  it('adds extra meta-data as YAML-compatible JSON values', async () => {
    const path = join(dir, 'seed.img');
    await buildNoCloudSeed(path, {
      instanceId: 'iid-2',
      hostname: 'vm2',
      extraMetaData: { 'public-keys': ['ssh-ed25519 AAAA x: y'], 'availability-zone': 'az-1', count: 3 },
    });
    const lines = (await readNoCloudSeed(path)).metaData.split('\n');
    expect(lines).toContain('public-keys: ["ssh-ed25519 AAAA x: y"]');
    expect(lines).toContain('availability-zone: "az-1"');
    expect(lines).toContain('count: 3');
  });

  it('holds user-data of 1 MiB and byte-exact UTF-8', async () => {
    const path = join(dir, 'seed.img');
    const line = '# größe ✓ ünïcode\n';
    const big = `#cloud-config\n${line.repeat(Math.floor((1024 * 1024 - 14) / Buffer.byteLength(line)))}`;
    expect(Buffer.byteLength(big)).toBeLessThanOrEqual(1024 * 1024);
    await buildNoCloudSeed(path, { instanceId: 'iid-big', hostname: 'big', userData: big });
    expect((await readNoCloudSeed(path)).userData).toBe(big);
  });

  it('replaces an existing seed and leaves no partial files behind', async () => {
    const path = join(dir, 'seed.img');
    await buildNoCloudSeed(path, { instanceId: 'iid-1', hostname: 'old' });
    await buildNoCloudSeed(path, { instanceId: 'iid-2', hostname: 'new' });
    expect((await readNoCloudSeed(path)).metaData).toContain('local-hostname: "new"');
    expect(await readdir(dir)).toEqual(['seed.img']);
  });

  it('leaves nothing behind when building fails', async () => {
    const path = join(dir, 'no-such-folder', 'seed.img');
    const err = await failure(buildNoCloudSeed(path, { instanceId: 'iid-1', hostname: 'x' }));
    expect(err.code).toBe('SEED_ERROR');
    expect(await readdir(dir)).toEqual([]);
  });

  it.each([
    '',
    '-leading',
    'trailing-',
    'under_score',
    'dot..dot',
    'trailing.',
    '.leading',
    'has space',
    'new\nline',
    'x'.repeat(64),
    `${'a'.repeat(63)}.${'b'.repeat(63)}.${'c'.repeat(63)}.${'d'.repeat(62)}`,
    'ümlaut',
  ])('rejects host name %j', async (hostname) => {
    const path = join(dir, 'seed.img');
    const err = await failure(buildNoCloudSeed(path, { instanceId: 'iid-1', hostname }));
    expect(err.code).toBe('INVALID_SPEC');
    expect(err.message).toContain('host name');
    expect(await readdir(dir)).toEqual([]);
  });

  it.each([
    'x'.repeat(63),
    `${'a'.repeat(63)}.${'b'.repeat(63)}.${'c'.repeat(63)}.${'d'.repeat(61)}`,
    '0',
    'A-1.b',
  ])('accepts host name %j', async (hostname) => {
    const path = join(dir, 'seed.img');
    await buildNoCloudSeed(path, { instanceId: 'iid-1', hostname });
    expect((await readNoCloudSeed(path)).metaData).toContain(`local-hostname: "${hostname}"`);
  });

  it.each(['', 'a\nlocal-hostname: evil', 'a: b', '"quoted"', 'a#b', 'x'.repeat(129), 'tab\there'])(
    'rejects instance id %j',
    async (instanceId) => {
      const err = await failure(buildNoCloudSeed(join(dir, 'seed.img'), { instanceId, hostname: 'ok' }));
      expect(err.code).toBe('INVALID_SPEC');
      expect(err.message).toContain('instance id');
    },
  );

  it('rejects user-data over 1 MiB and reserved or malformed meta-data keys', async () => {
    const path = join(dir, 'seed.img');
    const tooBig = `#cloud-config\n${'x'.repeat(1024 * 1024)}`;
    expect(
      (await failure(buildNoCloudSeed(path, { instanceId: 'i', hostname: 'h', userData: tooBig }))).code,
    ).toBe('INVALID_SPEC');
    for (const key of ['instance-id', 'local-hostname', 'bad key', 'x\ny', '']) {
      const err = await failure(
        buildNoCloudSeed(path, { instanceId: 'i', hostname: 'h', extraMetaData: { [key]: 'v' } }),
      );
      expect(err.code).toBe('INVALID_SPEC');
    }
    expect(await readdir(dir)).toEqual([]);
  });
});

describe('readNoCloudSeed', () => {
  it('fails with SEED_ERROR on a file that is not a FAT image', async () => {
    const path = join(dir, 'junk.img');
    await writeFile(path, Buffer.alloc(64 * 1024, 7));
    expect((await failure(readNoCloudSeed(path))).code).toBe('SEED_ERROR');
  });

  it('fails with SEED_ERROR on a FAT image without meta-data', async () => {
    const path = join(dir, 'empty.img');
    await runCommand('mkfs.vfat', ['-n', 'CIDATA', '-C', path, '1024']);
    expect((await stat(path)).size).toBe(1024 * 1024);
    const err = await failure(readNoCloudSeed(path));
    expect(err.code).toBe('SEED_ERROR');
    expect(err.message).toContain('meta-data');
  });
});
